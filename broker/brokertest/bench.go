package brokertest

import (
	"sync/atomic"
	"testing"

	"github.com/nhs-tre/tre/broker"
)

// BenchSubmitQuery measures parallel submissions, compile included.
func BenchSubmitQuery(b *testing.B, cfg Config) {
	f := NewFixture(b, cfg, cfg.Open(b), broker.Options{})
	sqls := []string{
		DefaultSQL,
		"SELECT region, count(*) FROM patients GROUP BY region",
		"SELECT sex, count(*) FROM patients WHERE region = 'London' GROUP BY sex",
		"SELECT imd_quintile, count(*) FROM patients GROUP BY imd_quintile",
	}
	var i atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			sql := sqls[int(i.Add(1))%len(sqls)]
			if _, err := f.Service.SubmitQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: sql, Purpose: "benchmark", Epsilon: 0.1}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchFindQueryByID measures parallel reads of one query with its history.
func BenchFindQueryByID(b *testing.B, cfg Config) {
	f := NewFixture(b, cfg, cfg.Open(b), broker.Options{})
	var ids []int64
	for range 50 {
		ids = append(ids, f.MustSubmit(f.Researcher, DefaultSQL, 0.1).ID)
	}
	var i atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := ids[int(i.Add(1))%len(ids)]
			if _, err := f.Service.FindQueryByID(f.Researcher, id); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
