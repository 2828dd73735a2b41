package queries

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/duckdb/duckdb-go/v2"
)

// Input limits. They bound the work one submission can cause before any
// validation, and make deeply nested or padded SQL a plain refusal.
const (
	maxSQLBytes    = 20000
	maxDepth       = 60
	maxNodes       = 4000
	maxInList      = 1000
	maxCTEs        = 16
	maxRelations   = 12
	maxGroupKeys   = 8
	maxAggregates  = 16
	maxCrossDomain = 10000
	// maxGroupBound caps query.groupBound; larger bounds are not tracked.
	maxGroupBound = 1 << 20
)

// Parser compiles SQL against catalogs. It runs json_serialize_sql on the
// submitted text, either in an in-memory DuckDB database of its own
// (NewParser) or on a connection the caller owns (NewParserConn): nothing is
// ever executed from a submission. A Parser is safe for concurrent use.
type Parser struct {
	db   *sql.DB // nil when the connection belongs to the caller
	stmt *sql.Stmt

	mu sync.Mutex
	// indexes caches each catalog's lookup tables, keyed by pointer: a
	// catalog must not be modified after it is first compiled against. The
	// key keeps the catalog alive, so a pointer is never reused for another.
	indexes map[*Catalog]*catalogIndex
	// asts caches parsed SQL by its exact text: the same text is typically
	// validated live, then submitted, then compiled again on approval. The
	// trees are never modified after parsing, so readers share them.
	asts map[string]obj
}

// AST cache limits: texts above maxCachedSQL bytes are not cached, and the
// cache is cleared when it holds maxCachedASTs entries.
const (
	maxCachedASTs = 256
	maxCachedSQL  = 8192
)

// maxCachedCatalogs bounds the index cache; when full it is cleared.
const maxCachedCatalogs = 64

// NewParser opens the in-memory DuckDB database used for parsing. External
// access and extension loading are switched off and the configuration
// locked, although only the parser is ever reached.
func NewParser() (*Parser, error) {
	connector, err := duckdb.NewConnector("", nil)
	if err != nil {
		return nil, fmt.Errorf("open parser database: %w", err)
	}
	db := sql.OpenDB(connector)
	n := runtime.GOMAXPROCS(0)
	db.SetMaxOpenConns(n)
	db.SetMaxIdleConns(n)
	// These settings are database-wide: set once, then locked.
	for _, q := range []string{
		"SET enable_external_access = false",
		"SET autoinstall_known_extensions = false",
		"SET autoload_known_extensions = false",
		"SET lock_configuration = true",
	} {
		if _, err := db.Exec(q); err != nil {
			db.Close()
			return nil, fmt.Errorf("configure parser database: %w", err)
		}
	}
	stmt, err := db.Prepare(serializeSQL)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("prepare parser statement: %w", err)
	}
	return newParser(db, stmt), nil
}

// NewParserConn returns a Parser that runs json_serialize_sql on conn, a
// DuckDB connection the caller owns and keeps open until the Parser is
// closed; Close leaves conn open. It saves the sandbox child a second
// database per job: the child passes its locked-down data connection.
//
// json_serialize_sql only parses. The text is a bound parameter, never
// spliced into the statement, and is neither bound against the
// connection's catalog nor executed, so parsing reads no table and changes
// nothing on conn: a text naming tables that do not exist parses just the
// same. Statements on one connection run one at a time, so parses and the
// caller's own statements on conn are serialised.
func NewParserConn(ctx context.Context, conn *sql.Conn) (*Parser, error) {
	stmt, err := conn.PrepareContext(ctx, serializeSQL)
	if err != nil {
		return nil, fmt.Errorf("prepare parser statement: %w", err)
	}
	return newParser(nil, stmt), nil
}

// serializeSQL has no skip_empty/skip_null: they drop fields that carry
// meaning (the empty grouping set of ROLLUP), which would let such queries
// through.
const serializeSQL = "SELECT json_serialize_sql(?::VARCHAR)::VARCHAR"

func newParser(db *sql.DB, stmt *sql.Stmt) *Parser {
	return &Parser{db: db, stmt: stmt, indexes: make(map[*Catalog]*catalogIndex), asts: make(map[string]obj)}
}

// Close releases the parser's statement, and its database if NewParser
// opened one.
func (p *Parser) Close() error {
	err := p.stmt.Close()
	if p.db == nil {
		return err
	}
	return errors.Join(err, p.db.Close())
}

// parse returns DuckDB's JSON AST of sql, from the cache when it can.
func (p *Parser) parse(ctx context.Context, sqlText string) (obj, error) {
	if len(sqlText) <= maxCachedSQL {
		p.mu.Lock()
		root, ok := p.asts[sqlText]
		p.mu.Unlock()
		if ok {
			return root, nil
		}
	}
	root, err := p.parseUncached(ctx, sqlText)
	if err != nil || len(sqlText) > maxCachedSQL {
		return root, err
	}
	p.mu.Lock()
	if len(p.asts) >= maxCachedASTs {
		clear(p.asts)
	}
	p.asts[sqlText] = root
	p.mu.Unlock()
	return root, nil
}

func (p *Parser) parseUncached(ctx context.Context, sqlText string) (obj, error) {
	var raw string
	if err := p.stmt.QueryRowContext(ctx, sqlText).Scan(&raw); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// DuckDB rejected the text before parsing it; its message is not
		// shown (it may quote the input back in unexpected ways).
		return nil, &Refusal{Construct: "unparseable text", Pos: -1, Message: "refused: the SQL could not be parsed"}
	}
	dec := json.NewDecoder(strings.NewReader(raw))
	dec.UseNumber()
	var root obj
	if err := dec.Decode(&root); err != nil {
		return nil, fmt.Errorf("decode parser output: %w", err)
	}
	return root, nil
}

func (p *Parser) index(cat *Catalog) *catalogIndex {
	p.mu.Lock()
	defer p.mu.Unlock()
	if idx, ok := p.indexes[cat]; ok {
		return idx
	}
	if len(p.indexes) >= maxCachedCatalogs {
		clear(p.indexes)
	}
	idx := newCatalogIndex(cat)
	p.indexes[cat] = idx
	return idx
}

// Compile parses sql with DuckDB's parser, validates it against cat and
// returns the plan, or a *Refusal saying which construct is not accepted.
//
// Plan.Rewritten returns one row per group: the group key columns in
// Spec.Groups order, each CAST to VARCHAR; then __patients BIGINT; then per
// aggregate five DOUBLE columns (count, sum, sumsq, top1, top2); then
// __dropped BIGINT, the rows removed by the k/C bounds; then one BIGINT[]
// per quantile tree (dp.Spec.TreeOwners order): the bounded values' leaf
// histogram (dp.QuantileLeaf), each entry leaf·2^40 + count, NULL for no
// values. Without GROUP BY it returns exactly one row.
func (p *Parser) Compile(ctx context.Context, cat *Catalog, sqlText string, opts Options) (*Plan, error) {
	return p.compile(ctx, cat, sqlText, opts, true)
}

// compile is Compile; shortcuts=false leaves out every shortcut (the
// one-row-per-patient paths, the count-only stage) so tests can check the
// shortcuts give the full pipeline's rows.
func (p *Parser) compile(ctx context.Context, cat *Catalog, sqlText string, opts Options, shortcuts bool) (*Plan, error) {
	if cat == nil {
		return nil, errors.New("compile: no catalog")
	}
	if len(sqlText) > maxSQLBytes {
		return nil, refuse("query text", -1, fmt.Sprintf("it is %d bytes long; the limit is %d", len(sqlText), maxSQLBytes))
	}
	if strings.TrimSpace(sqlText) == "" {
		return nil, refuse("an empty query", -1, "write one SELECT statement")
	}
	if !utf8.ValidString(sqlText) {
		return nil, refuse("text that is not valid UTF-8", -1, "")
	}
	if strings.ContainsRune(sqlText, 0) {
		return nil, refuse("a NUL character", strings.IndexByte(sqlText, 0), "")
	}
	root, err := p.parse(ctx, sqlText)
	if err != nil {
		return nil, err
	}
	if e, _ := root["error"].(bool); e {
		return nil, parseRefusal(root, sqlText)
	}
	stmts, _ := root["statements"].([]any)
	if len(stmts) != 1 {
		return nil, refuse("more than one statement", -1, fmt.Sprintf("found %d; submit exactly one SELECT statement", len(stmts)))
	}
	stmt, ok := stmts[0].(obj)
	if !ok {
		return nil, refuse("statement", -1, "unrecognised parser output")
	}
	c := &compiler{cat: cat, idx: p.index(cat), sql: sqlText, seed: opts.Seed, shortcuts: shortcuts}
	if len(opts.UniqueTables) > 0 {
		c.unique = make(map[string]bool, len(opts.UniqueTables))
		for _, t := range opts.UniqueTables {
			c.unique[strings.ToLower(t)] = true
		}
	}
	q, err := c.compileStatement(stmt)
	if err != nil {
		return nil, err
	}
	spec, err := c.spec(q, opts)
	if err != nil {
		return nil, err
	}
	names, err := c.codelistNames()
	if err != nil {
		return nil, err
	}
	plan := &Plan{
		Dataset:    cat.Dataset,
		SQL:        sqlText,
		SQLHash:    SQLHash(sqlText),
		Rewritten:  c.rewrite(q, spec),
		Spec:       spec,
		Predicates: q.predicates,
		Codelists:  names,
	}
	plan.Shape = c.shape(q, q.sc)
	codelistNeutral(plan)
	plan.Normalized = plan.Shape + "where " + strings.Join(plan.Predicates, "\nwhere ") + "\n"
	if err := finishPlan(plan); err != nil {
		return nil, err
	}
	return plan, nil
}

// parseRefusal turns a parser error into a refusal that does not echo
// DuckDB's message: it names the statement kind or the position only.
func parseRefusal(root obj, sqlText string) *Refusal {
	if t, _ := root["error_type"].(string); t == "not implemented" {
		// Name the first statement that is not a SELECT. Splitting on ';'
		// is only for the message: the refusal itself is DuckDB's verdict.
		offset := 0
		for _, part := range strings.Split(sqlText, ";") {
			if kw := firstKeyword(part); kw != "SELECT" && kw != "WITH" && kw != "FROM" && kw != "NON-SELECT" {
				return refuse(kw+" statement", offset+strings.Index(part, kw[:1])+0, "only a single SELECT statement may be submitted")
			}
			offset += len(part) + 1
		}
		return refuse("a statement other than SELECT", -1, "only a single SELECT statement may be submitted")
	}
	pos := -1
	if s, ok := root["position"].(string); ok {
		if n, err := strconv.Atoi(s); err == nil {
			pos = n
		}
	}
	near := ""
	if pos >= 0 && pos < len(sqlText) {
		end := pos
		for end < len(sqlText) && end-pos < 20 && !unicode.IsSpace(rune(sqlText[end])) {
			end++
		}
		near = fmt.Sprintf(" near %q", sqlText[pos:end])
	}
	msg := "refused: the SQL has a syntax error"
	if pos >= 0 {
		msg += fmt.Sprintf(" at position %d%s", pos, near)
	} else {
		msg = "refused: the SQL could not be parsed: check the syntax, and that expressions are not nested hundreds of levels deep"
	}
	return &Refusal{Construct: "syntax error", Pos: pos, Message: msg}
}

// firstKeyword is the first word of sqlText, upper-cased, skipping comments.
func firstKeyword(s string) string {
	for {
		s = strings.TrimLeftFunc(s, unicode.IsSpace)
		switch {
		case strings.HasPrefix(s, "--"):
			if i := strings.IndexByte(s, '\n'); i >= 0 {
				s = s[i+1:]
				continue
			}
			return "non-SELECT"
		case strings.HasPrefix(s, "/*"):
			if i := strings.Index(s, "*/"); i >= 0 {
				s = s[i+2:]
				continue
			}
			return "non-SELECT"
		}
		break
	}
	end := strings.IndexFunc(s, func(r rune) bool { return !unicode.IsLetter(r) })
	if end < 0 {
		end = len(s)
	}
	if end == 0 {
		return "non-SELECT"
	}
	return strings.ToUpper(s[:end])
}
