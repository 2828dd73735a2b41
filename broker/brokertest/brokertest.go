// Package brokertest is the conformance suite every broker.Store must pass,
// and the helpers it uses. broker/sqlite runs it always; broker/postgres runs
// it when TRE_TEST_DATABASE_URL is set. It exercises the stores through
// broker.Service, as the API does, with the real query compiler.
package brokertest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/queries"
)

// Store is a broker store the suite can also tamper with directly.
type Store interface {
	broker.Store
	// Exec runs one SQL statement with ? placeholders.
	Exec(ctx context.Context, query string, args ...any) error
}

// Config says how to open stores for the suite.
type Config struct {
	// Open returns a fresh, empty store, closed when tb ends.
	Open func(tb testing.TB) Store
	// OpenPair returns two stores over one fresh database, as two broker
	// processes would have.
	OpenPair func(tb testing.TB) (Store, Store)
	// Reopen, when set, closes s and opens its database again, applying
	// migrations as a broker start would.
	Reopen func(tb testing.TB, s Store) Store
	// Compiler defaults to a real *queries.Parser.
	Compiler broker.Compiler
	// SerialWrites says the store commits one write transaction (or group)
	// at a time in one process, so query ids follow commit order and each
	// write sees every one committed before it. PostgreSQL runs concurrent
	// transactions: ids are taken before commit, and a transaction does not
	// see others still in flight.
	SerialWrites bool
}

// Clock is an injectable clock for leases and expiry.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock at t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// MustParser returns a real query compiler closed when tb ends.
func MustParser(tb testing.TB) *queries.Parser {
	tb.Helper()
	p, err := queries.NewParser()
	if err != nil {
		tb.Fatalf("new parser: %v", err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// Dataset is the test catalog's dataset name.
const Dataset = "gp_test"

// Catalog returns a small valid catalog of patients and clinical events.
func Catalog(tb testing.TB) *queries.Catalog {
	tb.Helper()
	cat := &queries.Catalog{
		Dataset:     Dataset,
		PrivacyUnit: "patient_id",
		Policy: queries.Policy{
			MaxGroupsPerPatient: 4, MaxRowsPerGroup: 3, SmallCellThreshold: 10, RoundingBase: 5,
			OptOutTable: "optouts", DefaultEpsilon: 1, MaxEpsilon: 2, Delta: 1e-6,
		},
		Tables: []queries.Table{
			{Name: "patients", Columns: []queries.Column{
				{Name: "patient_id", Type: "BIGINT", Role: queries.RolePrivacyUnit},
				{Name: "sex", Type: "VARCHAR", Role: queries.RoleCategorical, Domain: []string{"female", "male", "unknown"}},
				{Name: "region", Type: "VARCHAR", Role: queries.RoleCategorical, Domain: []string{"London", "North East", "South West"}},
				{Name: "imd_quintile", Type: "INTEGER", Role: queries.RoleCategorical, Domain: []string{"1", "2", "3", "4", "5"}},
				{Name: "ethnicity", Type: "VARCHAR", Role: queries.RoleCategorical, Domain: []string{"White", "Mixed", "Asian", "Black", "Other"}},
				{Name: "date_of_birth", Type: "DATE", Role: queries.RoleDate},
			}},
			{Name: "clinical_events", Columns: []queries.Column{
				{Name: "patient_id", Type: "BIGINT", Role: queries.RolePrivacyUnit},
				{Name: "date", Type: "DATE", Role: queries.RoleDate},
				{Name: "snomed_code", Type: "VARCHAR", Role: queries.RoleCode, CodeSystem: "snomed"},
				{Name: "numeric_value", Type: "DOUBLE", Role: queries.RoleNumeric, Bounds: &[2]float64{0, 200}},
			}},
			{Name: "optouts", Columns: []queries.Column{
				{Name: "patient_id", Type: "BIGINT", Role: queries.RolePrivacyUnit},
			}},
		},
	}
	cat.SetDefaults()
	if err := cat.Validate(); err != nil {
		tb.Fatalf("test catalog: %v", err)
	}
	return cat
}

// Fixture constants.
const (
	SiteID         = "site-a"
	ProjectEpsilon = 10.0
	ProjectDelta   = 1e-3
	DefaultSQL     = "SELECT sex, count(*) FROM patients GROUP BY sex"
)
