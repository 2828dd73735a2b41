package queries

import (
	"context"
	"testing"

	"github.com/nhs-tre/tre/dp"
)

// TestCompileFederated: a federated compile differs from the ordinary one
// only in its mechanism (Gaussian), the same for every compile of the same
// SQL (the sites' parts carry its hash); a query on a public domain passes
// ValidateFederated, one needing partition selection is refused with the
// reason.
func TestCompileFederated(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	const sql = `SELECT p.sex, count(DISTINCT p.patient_id) AS n FROM patients p GROUP BY p.sex`
	compile := func(sql string, fed bool) *Plan {
		t.Helper()
		plan, err := p.Compile(context.Background(), cat, sql, Options{Seed: 1, Federated: fed})
		if err != nil {
			t.Fatal(err)
		}
		return plan
	}
	plain, fed, again := compile(sql, false), compile(sql, true), compile(sql, true)
	if fed.Spec.Mechanism != dp.MechanismGaussian {
		t.Fatalf("federated spec mechanism %q, want gaussian", fed.Spec.Mechanism)
	}
	if fed.Spec.Hash() != again.Spec.Hash() || fed.Spec.Hash() == plain.Spec.Hash() {
		t.Errorf("spec hashes: federated %s and %s, plain %s", fed.Spec.Hash(), again.Spec.Hash(), plain.Spec.Hash())
	}
	s := plain.Spec
	s.Mechanism = dp.MechanismGaussian
	if s.Hash() != fed.Spec.Hash() {
		t.Error("a federated spec differs from the plain one in more than its mechanism")
	}
	if err := fed.Spec.ValidateFederated(); err != nil {
		t.Errorf("public-domain federated query refused: %v", err)
	}
	if err := plain.Spec.ValidateFederated(); err == nil {
		t.Error("a Laplace spec passed ValidateFederated")
	}
	sel := compile(`SELECT snomed_code, count(*) AS n FROM clinical_events GROUP BY snomed_code`, true)
	if err := sel.Spec.ValidateFederated(); err == nil {
		t.Error("a federated query grouping on a column without public domain passed ValidateFederated")
	}
}
