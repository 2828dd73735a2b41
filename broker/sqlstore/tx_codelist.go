package sqlstore

import (
	"context"
	"strings"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/job"
)

// ---- codelists ----

// codeBatch is how many codes one INSERT writes (4 parameters each: well
// under SQLite's and PostgreSQL's parameter limits).
const codeBatch = 500

var insertCodeBatchSQL = `INSERT INTO codelist_codes (codelist, position, code, term) VALUES ` +
	strings.TrimSuffix(strings.Repeat("(?, ?, ?, ?), ", codeBatch), ", ")

func (t *tx) PutCodelist(ctx context.Context, c *broker.Codelist) error {
	terms := []string{}
	for _, code := range c.Codes[:min(len(c.Codes), broker.CodelistPreviewTerms)] {
		terms = append(terms, code.Term)
	}
	first, err := toJSON(terms)
	if err != nil {
		return err
	}
	if _, err := t.exec(ctx, `INSERT INTO codelists (name, description, hash, code_count, first_terms, uploaded_by, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?)`,
		c.Name, c.Description, c.Hash, len(c.Codes), first, c.UploadedBy, micros(c.CreatedAt)); err != nil {
		return err
	}
	i := 0
	for ; i+codeBatch <= len(c.Codes); i += codeBatch {
		args := make([]any, 0, 4*codeBatch)
		for j, code := range c.Codes[i : i+codeBatch] {
			args = append(args, c.Name, i+j, code.Code, code.Term)
		}
		if _, err := t.exec(ctx, insertCodeBatchSQL, args...); err != nil {
			return err
		}
	}
	for ; i < len(c.Codes); i++ {
		if _, err := t.exec(ctx, `INSERT INTO codelist_codes (codelist, position, code, term) VALUES (?, ?, ?, ?)`,
			c.Name, i, c.Codes[i].Code, c.Codes[i].Term); err != nil {
			return err
		}
	}
	return nil
}

const codelistColumns = `name, description, hash, code_count, first_terms, uploaded_by, created_at`

func scanCodelist(sc scanner) (*broker.Codelist, error) {
	c := &broker.Codelist{}
	var first string
	var created int64
	if err := sc.Scan(&c.Name, &c.Description, &c.Hash, &c.CodeCount, &first, &c.UploadedBy, &created); err != nil {
		return nil, err
	}
	c.CreatedAt = fromMicros(created)
	if err := fromJSON(first, &c.FirstTerms); err != nil {
		return nil, err
	}
	return c, nil
}

func (t *tx) FindCodelist(ctx context.Context, name string, withCodes bool) (*broker.Codelist, error) {
	rows, err := t.query(ctx, `SELECT `+codelistColumns+` FROM codelists WHERE name = ?`, name)
	if err != nil {
		return nil, err
	}
	found, err := collect(rows, scanCodelist)
	if err != nil {
		return nil, err
	}
	if len(found) == 0 {
		return nil, broker.Errorf(broker.ENOTFOUND, "codelist %s not found", name)
	}
	c := found[0]
	if !withCodes {
		return c, nil
	}
	rows, err = t.query(ctx, `SELECT code, term FROM codelist_codes WHERE codelist = ? ORDER BY position`, name)
	if err != nil {
		return nil, err
	}
	c.Codes, err = collect(rows, func(sc scanner) (job.CodelistCode, error) {
		var code job.CodelistCode
		err := sc.Scan(&code.Code, &code.Term)
		return code, err
	})
	return c, err
}

func (t *tx) FindCodelists(ctx context.Context) ([]*broker.Codelist, error) {
	rows, err := t.query(ctx, `SELECT `+codelistColumns+` FROM codelists ORDER BY created_at DESC, name`)
	if err != nil {
		return nil, err
	}
	return collect(rows, scanCodelist)
}

func (t *tx) FindCodelistUses(ctx context.Context, name string) ([]broker.CodelistUse, error) {
	const q = `SELECT qc.codelist, qc.hash, qc.query_id, q.project_id, q.status FROM query_codelists qc
		JOIN queries q ON q.id = qc.query_id`
	scan := func(sc scanner) (broker.CodelistUse, error) {
		var u broker.CodelistUse
		var status string
		err := sc.Scan(&u.Codelist, &u.Hash, &u.QueryID, &u.ProjectID, &status)
		u.Status = broker.Status(status)
		return u, err
	}
	if name == "" {
		rows, err := t.query(ctx, q+` ORDER BY qc.query_id, qc.codelist`)
		if err != nil {
			return nil, err
		}
		return collect(rows, scan)
	}
	rows, err := t.query(ctx, q+` WHERE qc.codelist = ? ORDER BY qc.query_id`, name)
	if err != nil {
		return nil, err
	}
	return collect(rows, scan)
}

// putQueryCodelists records the codelists a new query uses.
func (t *tx) putQueryCodelists(ctx context.Context, q *broker.Query) error {
	for _, c := range q.Codelists {
		if _, err := t.exec(ctx, `INSERT INTO query_codelists (query_id, codelist, hash) VALUES (?, ?, ?)`, q.ID, c.Name, c.Hash); err != nil {
			return err
		}
	}
	return nil
}
