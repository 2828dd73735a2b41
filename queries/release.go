package queries

import (
	"fmt"
	"regexp"
	"strings"
)

// The release snapshot is what every query of a site runs on: a DuckDB
// database the sandbox builds from the site's data file once per version of
// it, before any researcher SQL, in a child that runs nothing else
// (sandbox/snapshot.go). It holds, per catalog table but the opt-out table:
//
//   - only the catalog's non-forbidden columns, each cast to its declared
//     type, so the compiler's knowledge of kinds (kindOfType) is exact;
//   - for patient tables, no row of an opted-out patient and no row without
//     a patient id: the opt-out is applied by construction, before any
//     expression of a researcher is evaluated on any row (DuckDB may
//     reorder a query's filters, so a filter inside the query is not a
//     barrier: a researcher's WHERE could run on opted-out rows first);
//   - dates and timestamps outside the date band (0001-01-01 to
//     9999-12-31, and ±infinity) as NULL: inside it every date function is
//     total (total.go);
//   - where the data declares the privacy unit a key (UniqueColumnsSQL),
//     a row of SnapshotKeysTable saying so, written only after the copy is
//     checked to hold each patient at most once (the CAST to the catalog's
//     type could merge two ids), so queries over the snapshot keep the
//     one-row-per-patient proofs (Options.UniqueTables). Not a PRIMARY
//     KEY: DuckDB builds a key's index in memory, outside what it can
//     spill, and at 30M patients that alone is more than a job's 2 GB.
//
// Lookup tables are copied as they are (non-forbidden columns). The opt-out
// table is not copied at all. The schema tre_snapshot holds two tables:
// meta, with the opt-out snapshot hash (OptOutHashSQL) of the data it was
// built from (the hash the output checker sees), and keys.

// SnapshotMetaTable is the table of the release snapshot holding its
// metadata; queries cannot name it (schema-qualified names are refused).
const SnapshotMetaTable = `"tre_snapshot"."meta"`

// SnapshotKeysTable is the table of the release snapshot listing the
// tables whose privacy-unit column holds each patient at most once
// (table_name, column_name in lower case): ReadUniqueColumns reads it
// beside the constraints. Only the snapshot builder writes it.
const SnapshotKeysTable = `"tre_snapshot"."keys"`

// typeRe is what a column's declared type must look like: it is written
// into the snapshot's CREATE TABLE and CASTs.
var typeRe = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]*( [A-Za-z][A-Za-z0-9_]*){0,3}( ?\([0-9]{1,3}( ?, ?[0-9]{1,3})?\))?$`)

// ReleaseStep is one statement of building a release snapshot, and the
// catalog table it copies ("" for the metadata).
type ReleaseStep struct {
	Table string
	SQL   string
}

// ReleaseStatements returns the statements that build the release snapshot
// of cat into the attached database dst, reading the site's data from the
// current default database: its tables by their plain names. unique lists
// the tables whose privacy unit the data declares a key (UniqueTablesFrom).
// Run OptOutNullsSQL first: with a NULL id in the opt-out table the anti
// join would opt nobody out by that row, and an opt-out must never fail
// open.
func ReleaseStatements(cat *Catalog, dst string, unique []string) []ReleaseStep {
	pu := QuoteIdent(cat.PrivacyUnit)
	optout := QuoteIdent(cat.Policy.OptOutTable)
	d := QuoteIdent(dst) + "."
	isUnique := make(map[string]bool, len(unique))
	for _, t := range unique {
		isUnique[strings.ToLower(t)] = true
	}
	var out, keys []ReleaseStep
	for _, t := range cat.Tables {
		if strings.EqualFold(t.Name, cat.Policy.OptOutTable) {
			continue
		}
		var defs, sel []string
		for _, col := range t.Columns {
			if col.Role == RoleForbidden {
				continue
			}
			name := QuoteIdent(col.Name)
			def := name + " " + col.Type
			if col.Role == RolePrivacyUnit {
				def += " NOT NULL"
			}
			defs = append(defs, def)
			v := fmt.Sprintf("CAST(s.%s AS %s)", name, col.Type)
			if k, ts := kindOfType(col.Type); k == kDate {
				v = inBand(v, ts)
			}
			sel = append(sel, v)
		}
		if len(defs) == 0 {
			continue
		}
		tbl := QuoteIdent(t.Name)
		if !t.Public && isUnique[strings.ToLower(t.Name)] {
			keys = append(keys, ReleaseStep{t.Name, fmt.Sprintf(
				"INSERT INTO %s%s SELECT %s, %s WHERE NOT EXISTS (SELECT 1 FROM %s%s GROUP BY %s HAVING count(*) > 1)",
				d, SnapshotKeysTable, quoteString(t.Name), quoteString(strings.ToLower(cat.PrivacyUnit)), d, tbl, pu)})
		}
		out = append(out, ReleaseStep{t.Name, fmt.Sprintf("CREATE TABLE %s%s (%s)", d, tbl, strings.Join(defs, ", "))})
		ins := fmt.Sprintf("INSERT INTO %s%s SELECT %s FROM %s AS s", d, tbl, strings.Join(sel, ", "), tbl)
		if !t.Public {
			ins += fmt.Sprintf(" ANTI JOIN %s AS o ON s.%s = o.%s WHERE s.%s IS NOT NULL", optout, pu, pu, pu)
		}
		out = append(out, ReleaseStep{t.Name, ins})
	}
	out = append(out,
		ReleaseStep{"", "CREATE SCHEMA " + d + `"tre_snapshot"`},
		ReleaseStep{"", fmt.Sprintf("CREATE TABLE %s%s AS SELECT (%s) AS optout_hash", d, SnapshotMetaTable, OptOutHashSQL(cat))},
		ReleaseStep{"", fmt.Sprintf("CREATE TABLE %s%s (table_name VARCHAR NOT NULL, column_name VARCHAR NOT NULL)", d, SnapshotKeysTable)},
	)
	return append(out, keys...)
}

// OptOutNullsSQL counts the rows of the opt-out table without a patient id:
// a release snapshot is not built while there are any.
func OptOutNullsSQL(cat *Catalog) string {
	pu := QuoteIdent(cat.PrivacyUnit)
	return fmt.Sprintf("SELECT count(*) FROM %s WHERE %s IS NULL", QuoteIdent(cat.Policy.OptOutTable), pu)
}

// OptOutHashSQL is a scalar query computing the opt-out snapshot hash of
// cat's opt-out table in the current default database. Canonical form
// (docs/security.md, "opt-out snapshot hash"): the distinct non-NULL values
// of the privacy-unit column of the opt-out table, sorted ascending in the
// column's own type (numeric for integer ids, so 9 < 10 < 100; byte order
// for text ids), each written as CAST(id AS VARCHAR) followed by one newline
// (0x0A), concatenated; SHA-256 of that text in lower-case hex, and of the
// empty text when there are no ids. One list_sort measured faster than an
// ordered string_agg; array_to_string casts each element as CAST(id AS
// VARCHAR) does.
func OptOutHashSQL(cat *Catalog) string {
	pu := QuoteIdent(cat.PrivacyUnit)
	return fmt.Sprintf("SELECT sha256(coalesce(array_to_string(list_sort(list(id)), chr(10)) || chr(10), '')) "+
		"FROM (SELECT DISTINCT %s AS id FROM %s WHERE %s IS NOT NULL)", pu, QuoteIdent(cat.Policy.OptOutTable), pu)
}
