package cli

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/synth"
)

// TestDatasetsCommand: tre datasets prints what a researcher may query —
// tables, columns with roles, bounds and domains, the example codes — and
// hides nothing of the opt-out list but its name.
func TestDatasetsCommand(t *testing.T) {
	cat := synth.Catalog()
	cat.SetDefaults()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/datasets" || r.Header.Get("Authorization") != "Bearer good" {
			w.WriteHeader(404)
			return
		}
		json.NewEncoder(w).Encode(api.List[queries.Catalog]{Items: []queries.Catalog{*cat}, Total: 1})
	}))
	defer ts.Close()
	datasets := func(o, e io.Writer) Command { return &DatasetsMain{Stdout: o, Stderr: e} }
	env := map[string]string{"TRE_BROKER": ts.URL, "TRE_TOKEN_RESEARCHER": "good"}

	code, out, msg := runClient(t, datasets, env)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, msg)
	}
	for _, want := range []string{
		"DATASET nhs_gp_synthetic",
		"at most 12 groups and with at most 5 rows per group",
		"TABLE patients (one row per patient)",
		"region", "Yorkshire and The Humber",
		"numeric_value", "clamped to [0, 200]",
		"Codes of snomed_code (13 examples, snomed):", "44054006", "Diabetes mellitus type 2",
		"TABLE optouts (the opt-out list: never queried",
		"TABLE snomed_codes (public lookup table)",
		"patient_id", "joins only", "practice_id", "never usable",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "type1 or ndop") {
		t.Errorf("the opt-out list's columns are listed:\n%s", out)
	}

	if code, _, msg := runClient(t, datasets, env, "--dataset", "nope"); code != exitNotFoundOrNo || !strings.Contains(msg, `no dataset "nope" (datasets: nhs_gp_synthetic)`) {
		t.Errorf("unknown dataset: exit %d, %q", code, msg)
	}
	code, out, _ = runClient(t, datasets, env, "--dataset", "NHS_GP_SYNTHETIC", "--json")
	var got []queries.Catalog
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || len(got) != 1 || len(got[0].Tables) != len(cat.Tables) {
		t.Errorf("--json: exit %d, %.300s", code, out)
	}
}
