package broker

import (
	"context"
	"encoding/csv"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// Codelist limits.
const (
	// MaxCodelistCodes is the most codes one codelist may hold.
	MaxCodelistCodes = 100_000
	// MaxCodelistCSVBytes is the largest CSV an upload may carry.
	MaxCodelistCSVBytes = 24 << 20
	maxCodeLen          = 100
	maxTermLen          = 1000
	maxCodelistDescLen  = 2000
	// CodelistPreviewTerms is how many first terms a codelist's summary
	// shows a reviewer.
	CodelistPreviewTerms = 3
)

// Codelist is a versioned, public list of clinical codes (SNOMED CT, dm+d,
// ICD-10…) that queries join as the lookup table codelists(codelist, code,
// term). It holds no patient data and is immutable once uploaded: a new
// version is a new name.
type Codelist struct {
	// Name is ORG/SLUG/VERSION, as OpenCodelists cites codelists.
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Hash is job.CodelistHash of Codes: what queries record and sites
	// check.
	Hash       string    `json:"hash"`
	CodeCount  int       `json:"code_count"`
	UploadedBy string    `json:"uploaded_by"`
	CreatedAt  time.Time `json:"created_at"`
	// FirstTerms are the terms of the first codes (in upload order), a
	// preview for reviewers.
	FirstTerms []string `json:"first_terms,omitempty"`
	// Codes, in upload order, and UsedBy are set by FindCodelist only.
	Codes  []job.CodelistCode `json:"codes,omitempty"`
	UsedBy []CodelistUse      `json:"used_by,omitempty"`
}

// CodelistRef names a codelist a query uses, with the content hash it had.
type CodelistRef struct {
	Name string `json:"name"`
	Hash string `json:"hash"`
}

// CodelistUse is a query that joins a codelist.
type CodelistUse struct {
	Codelist  string `json:"codelist"`
	Hash      string `json:"hash"`
	QueryID   int64  `json:"query_id"`
	ProjectID int64  `json:"project_id"`
	Status    Status `json:"status"`
}

// CodelistUpload is an upload: the CSV is OpenCodelists' download format.
type CodelistUpload struct {
	Name        string
	Description string
	CSV         string
}

func codelistObject(name string) string { return "codelist/" + name }

// ValidCodelistName checks a codelist name: ORG/SLUG/VERSION, each part 1
// to 100 letters, digits, '-', '_' or '.', starting with a letter or digit.
func ValidCodelistName(name string) error {
	parts := strings.Split(name, "/")
	if len(parts) != 3 {
		return Errorf(EINVALID, "codelist name %q must be ORG/SLUG/VERSION (three parts separated by '/'), e.g. opensafely/asthma-diagnosis/2020-04-15", name)
	}
	for i, p := range parts {
		what := [...]string{"organisation", "slug", "version"}[i]
		if p == "" || len(p) > 100 {
			return Errorf(EINVALID, "codelist name %q: the %s must be 1 to 100 characters", name, what)
		}
		for j, r := range p {
			ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || j > 0 && (r == '-' || r == '_' || r == '.')
			if !ok {
				return Errorf(EINVALID, "codelist name %q: the %s may contain only letters, digits, '-', '_' and '.' and must start with a letter or digit", name, what)
			}
		}
	}
	return nil
}

// Header names ParseCodelistCSV accepts, lower case: OpenCodelists' download
// has code and term (SNOMED CT, ICD-10, CTV3…) or dmd_id and dmd_name
// (dm+d).
var (
	codeHeaders = []string{"code", "dmd_id"}
	termHeaders = []string{"term", "dmd_name"}
)

// ParseCodelistCSV reads a codelist in OpenCodelists' CSV download format: a
// header row naming a code column ("code", or "dmd_id" for dm+d) and a term
// column ("term", or "dmd_name"), in any order; other columns are ignored.
// Values are trimmed. Every refusal names the line: a missing header, an
// empty or duplicate code, more than MaxCodelistCodes codes.
func ParseCodelistCSV(text string) ([]job.CodelistCode, error) {
	if len(text) > MaxCodelistCSVBytes {
		return nil, Errorf(EINVALID, "the CSV is larger than %d bytes", MaxCodelistCSVBytes)
	}
	if !utf8.ValidString(text) {
		return nil, Errorf(EINVALID, "the CSV is not valid UTF-8")
	}
	r := csv.NewReader(strings.NewReader(strings.TrimPrefix(text, "\uFEFF")))
	r.FieldsPerRecord = -1
	header, err := r.Read()
	if errors.Is(err, io.EOF) {
		return nil, Errorf(EINVALID, "the CSV is empty: line 1 must be a header naming the columns code and term")
	} else if err != nil {
		return nil, csvError(err)
	}
	ci, ti := headerIndex(header, codeHeaders), headerIndex(header, termHeaders)
	if ci < 0 || ti < 0 {
		return nil, Errorf(EINVALID, "line 1: the header must name a code column (code, or dmd_id) and a term column (term, or dmd_name); it has %s", strings.Join(header, ", "))
	}
	var codes []job.CodelistCode
	seen := map[string]int{}
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, csvError(err)
		}
		line, _ := r.FieldPos(0)
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue // a blank line
		}
		c, err := codeOf(rec, ci, ti, line)
		if err != nil {
			return nil, err
		}
		if first, dup := seen[c.Code]; dup {
			return nil, Errorf(EINVALID, "line %d: code %q is listed twice (first on line %d)", line, c.Code, first)
		}
		if len(codes) == MaxCodelistCodes {
			return nil, Errorf(EINVALID, "line %d: a codelist may hold at most %d codes", line, MaxCodelistCodes)
		}
		seen[c.Code] = line
		codes = append(codes, c)
	}
	if len(codes) == 0 {
		return nil, Errorf(EINVALID, "the CSV has a header but no codes")
	}
	return codes, nil
}

// codeOf reads one record's code and term.
func codeOf(rec []string, ci, ti, line int) (job.CodelistCode, error) {
	if ci >= len(rec) || ti >= len(rec) {
		return job.CodelistCode{}, Errorf(EINVALID, "line %d: the row has %d columns, fewer than the header", line, len(rec))
	}
	c := job.CodelistCode{Code: strings.TrimSpace(rec[ci]), Term: strings.TrimSpace(rec[ti])}
	switch {
	case c.Code == "":
		return c, Errorf(EINVALID, "line %d: the code is empty", line)
	case len(c.Code) > maxCodeLen:
		return c, Errorf(EINVALID, "line %d: the code is longer than %d characters", line, maxCodeLen)
	case len(c.Term) > maxTermLen:
		return c, Errorf(EINVALID, "line %d: the term is longer than %d characters", line, maxTermLen)
	case strings.IndexFunc(c.Code+c.Term, unicode.IsControl) >= 0:
		return c, Errorf(EINVALID, "line %d: the code or term holds a control character", line)
	}
	return c, nil
}

func headerIndex(header, names []string) int {
	for i, h := range header {
		if slices.Contains(names, strings.ToLower(strings.TrimSpace(h))) {
			return i
		}
	}
	return -1
}

// csvError names the line of a malformed CSV without quoting it.
func csvError(err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return Errorf(EINVALID, "line %d: malformed CSV (%s)", pe.Line, pe.Err)
	}
	return Errorf(EINVALID, "malformed CSV")
}

// CreateCodelist stores an uploaded codelist. Admins, reviewers and
// researchers may upload (a codelist is public and runs nothing); a name
// that exists is a conflict, whatever the content. The upload is audited
// with the name and content hash.
func (s *Service) CreateCodelist(ctx context.Context, up CodelistUpload) (*Codelist, error) {
	u, err := s.authorize(ctx, "codelist.upload", codelistObject(up.Name), RoleAdmin, RoleReviewer, RoleResearcher)
	if err != nil {
		return nil, err
	}
	if err := ValidCodelistName(up.Name); err != nil {
		return nil, err
	}
	up.Description = strings.TrimSpace(up.Description)
	if len(up.Description) > maxCodelistDescLen {
		return nil, Errorf(EINVALID, "description is longer than %d characters", maxCodelistDescLen)
	}
	codes, err := ParseCodelistCSV(up.CSV)
	if err != nil {
		return nil, err
	}
	now := s.clock()
	cl := &Codelist{
		Name: up.Name, Description: up.Description, Hash: job.CodelistHash(codes), CodeCount: len(codes),
		UploadedBy: u.Subject, CreatedAt: now, Codes: codes,
	}
	err = s.update(ctx, u, func(tx Tx) error {
		if err := tx.PutCodelist(ctx, cl); err != nil {
			if ErrorCode(err) == ECONFLICT {
				return Errorf(ECONFLICT, "codelist %s already exists: codelists are immutable, upload a new version under a new name", cl.Name)
			}
			return err
		}
		return appendAudit(ctx, tx, now, u.Subject, "codelist.upload", codelistObject(cl.Name),
			auditDetail("name", cl.Name, "sha256", cl.Hash, "codes", strconv.Itoa(cl.CodeCount)))
	})
	if err != nil {
		return nil, err
	}
	cl.FirstTerms = firstTerms(codes)
	cl.Codes = nil
	return cl, nil
}

func firstTerms(codes []job.CodelistCode) []string {
	var out []string
	for _, c := range codes[:min(len(codes), CodelistPreviewTerms)] {
		out = append(out, c.Term)
	}
	return out
}

// FindCodelists lists every codelist, newest first, without codes.
// Codelists are public: anyone may read them, signed in or not (the web's
// pages, /ui/codelists).
func (s *Service) FindCodelists(ctx context.Context) ([]*Codelist, error) {
	u := UserFromContext(ctx)
	var out []*Codelist
	err := s.view(ctx, u, func(tx Tx) error {
		var err error
		out, err = tx.FindCodelists(ctx)
		return err
	})
	return out, err
}

// FindCodelist returns one codelist with its codes and the queries that
// use it: staff see every such query, researchers those of their projects
// and the released ones, anyone else (not signed in) the released ones,
// which the public register shows anyway.
func (s *Service) FindCodelist(ctx context.Context, name string) (*Codelist, error) {
	u := UserFromContext(ctx)
	if err := ValidCodelistName(name); err != nil {
		return nil, err
	}
	var cl *Codelist
	err := s.view(ctx, u, func(tx Tx) error {
		var err error
		if cl, err = tx.FindCodelist(ctx, name, true); err != nil {
			return err
		}
		uses, err := tx.FindCodelistUses(ctx, name)
		if err != nil {
			return err
		}
		cl.UsedBy, err = s.visibleUses(ctx, tx, u, uses)
		return err
	})
	if err != nil {
		return nil, err
	}
	return cl, nil
}

// visibleUses keeps the uses u may see.
func (s *Service) visibleUses(ctx context.Context, tx Tx, u *User, uses []CodelistUse) ([]CodelistUse, error) {
	if u != nil && (isStaff(u) || u.HasRole(RoleAgent)) {
		return uses, nil
	}
	member := map[int64]bool{}
	out := []CodelistUse{}
	for _, use := range uses {
		m, seen := member[use.ProjectID]
		if !seen && u != nil && u.Subject != "" {
			var err error
			if m, err = tx.IsMember(ctx, use.ProjectID, u.Subject); err != nil {
				return nil, err
			}
			member[use.ProjectID] = m
		}
		switch {
		case m:
			use.Status = "" // a researcher sees statuses on the query itself, at their granularity
			out = append(out, use)
		case use.Status == StatusReleased:
			out = append(out, use)
		}
	}
	return out, nil
}

// codelistRefs resolves the codelists a plan names: each must exist; the
// refusal names the first that does not.
func codelistRefs(ctx context.Context, tx Tx, plan *queries.Plan) ([]CodelistRef, error) {
	refs := []CodelistRef{}
	for _, name := range plan.Codelists {
		cl, err := tx.FindCodelist(ctx, name, false)
		if ErrorCode(err) == ENOTFOUND {
			return nil, Errorf(EREFUSED, "refused: codelist %q does not exist (see tre codelist list; upload it with tre codelist upload)", name)
		} else if err != nil {
			return nil, err
		}
		refs = append(refs, CodelistRef{Name: cl.Name, Hash: cl.Hash})
	}
	return refs, nil
}
