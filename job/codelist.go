package job

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"
)

// Codelist is a public list of clinical codes a query joins as the lookup
// table codelists(codelist, code, term). A lease names each codelist its
// query uses by Name and Hash only; the agent fetches the codes by name,
// checks them against Hash (CodelistHash) and fills Codes before the job
// reaches the sandbox, whose child checks them again. A codelist holds no
// patient data.
type Codelist struct {
	// Name is ORG/SLUG/VERSION, e.g. "opensafely/asthma-diagnosis/2020-04-15".
	Name string `json:"name"`
	// Hash is CodelistHash of Codes as the broker stored them at upload.
	Hash  string         `json:"hash"`
	Codes []CodelistCode `json:"codes,omitempty"`
}

// CodelistCode is one code of a codelist and its term.
type CodelistCode struct {
	Code string `json:"code"`
	Term string `json:"term,omitempty"`
}

// CodelistHash is the hex SHA-256 of a codelist's canonical form: its codes
// sorted by code (byte order), each with its term, as the JSON array
// [["code","term"],…]. The broker computes it at upload; the agent and the
// sandbox child each check the codes they were given against it, so a
// codelist cannot change between the reviewer's approval and the run.
func CodelistHash(codes []CodelistCode) string {
	sorted := slices.Clone(codes)
	slices.SortFunc(sorted, func(a, b CodelistCode) int { return strings.Compare(a.Code, b.Code) })
	pairs := make([][2]string, len(sorted))
	for i, c := range sorted {
		pairs[i] = [2]string{c.Code, c.Term}
	}
	b, _ := json.Marshal(pairs) // strings only: cannot fail
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Verify checks that the codelist's codes match its hash.
func (c *Codelist) Verify() error {
	if CodelistHash(c.Codes) != c.Hash {
		return Errorf(CodeInvalid, "codelist %s does not match its content hash", c.Name)
	}
	return nil
}

// AbsentCodes are the codes of a codelist that occur in no code column of
// a dry run's synthetic data: a hint that a codelist may not match the
// dataset's terminology. Only dry runs, on synthetic data, report them;
// a job at a site never does.
type AbsentCodes struct {
	Codelist string `json:"codelist"`
	// Count is how many of the codelist's codes are absent; Codes the
	// first MaxAbsentCodes of them, in code order.
	Count int      `json:"count"`
	Codes []string `json:"codes"`
}

// MaxAbsentCodes is how many absent codes a dry run lists per codelist.
const MaxAbsentCodes = 100
