package synth

// Measurement codes (SNOMED CT) recorded with a numeric_value.
const (
	codeHbA1c    = "999791000000106"
	codeBMI      = "60621009"
	codeSBP      = "271649006"
	codeEGFR     = "1011481000000105"
	termHbA1c    = "Haemoglobin A1c level - IFCC standardised"
	termBMI      = "Body mass index"
	termSBP      = "Systolic blood pressure"
	termEGFR     = "eGFR using creatinine (CKD-EPI) per 1.73 square metres"
	measureHbA1c = "hba1c"
	measureBMI   = "bmi"
	measureSBP   = "systolic_blood_pressure"
	measureEGFR  = "egfr"
)

// snomedRow is one row of the public snomed_codes lookup.
type snomedRow struct{ code, term, condition string }

func snomedRows() []snomedRow {
	rows := make([]snomedRow, 0, nConditions+5)
	for _, c := range conditions {
		rows = append(rows, snomedRow{c.code, c.term, c.name})
	}
	return append(rows,
		snomedRow{fabryCode, fabryTerm, "fabry_disease"},
		snomedRow{codeHbA1c, termHbA1c, measureHbA1c},
		snomedRow{codeBMI, termBMI, measureBMI},
		snomedRow{codeSBP, termSBP, measureSBP},
		snomedRow{codeEGFR, termEGFR, measureEGFR},
	)
}

// Drug classes, in the order used by class indexes in SQL.
const (
	drugMetformin = iota
	drugStatin
	drugICS
	drugSalbutamol
	drugAnticoagulant
	drugAntihypertensive
	drugAntidepressant
	drugAntibiotic
	nDrugClasses
)

var drugClassNames = [nDrugClasses]string{
	"metformin", "statin", "inhaled_corticosteroid", "salbutamol",
	"anticoagulant", "antihypertensive", "antidepressant", "antibiotic",
}

// drugs lists the products of each class. The codes have the shape of dm+d
// VMP identifiers but come from a range chosen for this generator ("99"
// followed by class and product numbers); they are not live dm+d codes, so
// a code list written against this dataset cannot be mistaken for one
// written against a real extract.
var drugs = [nDrugClasses][]string{
	drugMetformin:        {"Metformin 500mg tablets", "Metformin 1g modified-release tablets"},
	drugStatin:           {"Atorvastatin 20mg tablets", "Atorvastatin 40mg tablets", "Simvastatin 40mg tablets", "Rosuvastatin 10mg tablets"},
	drugICS:              {"Beclometasone 100micrograms/dose inhaler", "Budesonide 200micrograms/dose dry powder inhaler", "Fluticasone 125micrograms/dose inhaler"},
	drugSalbutamol:       {"Salbutamol 100micrograms/dose inhaler CFC free", "Salbutamol 100micrograms/dose breath actuated inhaler"},
	drugAnticoagulant:    {"Apixaban 5mg tablets", "Rivaroxaban 20mg tablets", "Edoxaban 60mg tablets", "Warfarin 1mg tablets"},
	drugAntihypertensive: {"Amlodipine 5mg tablets", "Ramipril 5mg capsules", "Losartan 50mg tablets", "Indapamide 2.5mg tablets", "Bisoprolol 5mg tablets", "Lisinopril 10mg tablets"},
	drugAntidepressant:   {"Sertraline 50mg tablets", "Citalopram 20mg tablets", "Fluoxetine 20mg capsules", "Mirtazapine 15mg tablets"},
	drugAntibiotic:       {"Amoxicillin 500mg capsules", "Doxycycline 100mg capsules", "Clarithromycin 500mg tablets", "Nitrofurantoin 100mg modified-release capsules", "Flucloxacillin 500mg capsules", "Phenoxymethylpenicillin 250mg tablets"},
}

// dmdCode is the synthetic dm+d-shaped code of product i of class c.
func dmdCode(c, i int) string {
	return "99" + string(rune('1'+c)) + "0" + string(rune('1'+i)) + "1000001"
}

// icd10 diagnoses used for hospital admissions, with their terms (for the
// documentation).
var icd10Terms = map[string]string{
	"I50.0": "Congestive heart failure", "I50.1": "Left ventricular failure", "I50.9": "Heart failure, unspecified",
	"J44.0": "COPD with acute lower respiratory infection", "J44.1": "COPD with acute exacerbation",
	"I21.9": "Acute myocardial infarction, unspecified", "I48.9": "Atrial fibrillation and flutter, unspecified",
	"E11.9": "Type 2 diabetes without complications", "J45.9": "Asthma, unspecified",
	"R07.4": "Chest pain, unspecified", "J18.9": "Pneumonia, unspecified", "N39.0": "Urinary tract infection",
	"R10.4": "Other and unspecified abdominal pain", "A09.9": "Gastroenteritis and colitis", "S72.0": "Fracture of neck of femur",
	"H25.9": "Senile cataract, unspecified", "M17.1": "Other primary gonarthrosis", "K80.2": "Calculus of gallbladder without cholecystitis",
	"K40.9": "Inguinal hernia", "N40": "Hyperplasia of prostate", "O80": "Single spontaneous delivery", "O82": "Single delivery by caesarean section",
}

// Admission diagnosis lists by kind; the generator picks uniformly within a
// list.
var (
	icdEmergency = []string{"R07.4", "J18.9", "N39.0", "R10.4", "A09.9"}
	icdElective  = []string{"H25.9", "M17.1", "K80.2", "K40.9"}
	icdMaternity = []string{"O80", "O82"}
)

// Vaccines (the schema's vocabulary).
var vaccines = []string{"influenza", "covid19", "pneumococcal", "shingles", "mmr"}

// Admission methods (the schema's vocabulary).
var admissionMethods = []string{"elective", "emergency", "maternity", "transfer"}

// Opt-out kinds.
var optoutKinds = []string{"type1", "ndop"}
