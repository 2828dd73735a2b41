package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// GenesisHash is the PrevHash of the first audit entry.
const GenesisHash = "0000000000000000000000000000000000000000000000000000000000000000"

// HashAuditEntry returns the hex SHA-256 over the canonical encoding of e:
// a JSON array of prev_hash, seq, the time in Unix microseconds (UTC), actor,
// action, object and detail. Including seq and prev_hash makes removal and
// reordering detectable; JSON gives an unambiguous field separation.
func HashAuditEntry(e *AuditEntry) string {
	b, err := json.Marshal([]any{e.PrevHash, e.Seq, e.At.UnixMicro(), e.Actor, e.Action, e.Object, e.Detail})
	if err != nil {
		// Marshalling strings and integers cannot fail.
		panic(fmt.Sprintf("broker: encode audit entry: %v", err))
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// appendAudit adds one entry to the chain inside tx. It must be the last
// write of a transaction: it holds the chain lock until commit.
func appendAudit(ctx context.Context, tx Tx, at time.Time, actor, action, object, detail string) error {
	seq, prev, err := tx.LockAuditHead(ctx)
	if err != nil {
		return err
	}
	if seq == 0 {
		prev = GenesisHash
	}
	e := &AuditEntry{
		Seq:      seq + 1,
		At:       at.UTC().Truncate(time.Microsecond),
		Actor:    actor,
		Action:   action,
		Object:   object,
		Detail:   detail,
		PrevHash: prev,
	}
	e.Hash = HashAuditEntry(e)
	return tx.InsertAudit(ctx, e)
}

// auditBatch is how many entries VerifyChain reads per transaction.
const auditBatch = 2000

// VerifyChain recomputes the whole audit chain of store and reports the
// first entry that is missing, altered or out of place. It needs no caller
// identity: `tre audit verify` runs it directly against the database.
//
// A chain whose last entries were deleted is still a valid chain: only a
// head published earlier shows the cut. expect, when not nil, is such a
// head: the chain must hold at least expect.Entries entries (when set) and
// an entry with hash expect.Hash (when set), at seq expect.Entries when
// both are set.
func VerifyChain(ctx context.Context, store Store, expect *AuditHead) (*AuditVerification, error) {
	v := &AuditVerification{OK: true}
	prev := GenesisHash
	var last, found int64
	for {
		var batch []*AuditEntry
		err := store.View(ctx, func(tx Tx) error {
			var err error
			batch, err = tx.ScanAudit(ctx, last, auditBatch)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("verify audit chain: %w", err)
		}
		for _, e := range batch {
			want := last + 1
			switch {
			case e.Seq != want:
				return fail(v, want, fmt.Sprintf("entry %d is missing (next entry is %d)", want, e.Seq)), nil
			case e.PrevHash != prev:
				return fail(v, e.Seq, fmt.Sprintf("entry %d does not link to entry %d (previous hash differs)", e.Seq, e.Seq-1)), nil
			case HashAuditEntry(e) != e.Hash:
				return fail(v, e.Seq, fmt.Sprintf("entry %d was altered (hash does not match its contents)", e.Seq)), nil
			}
			if expect != nil && expect.Hash != "" && e.Hash == expect.Hash {
				found = e.Seq
			}
			prev, last = e.Hash, e.Seq
			v.Entries++
		}
		if len(batch) < auditBatch {
			break
		}
	}
	if last > 0 {
		v.Head = prev
	}
	if expect == nil {
		return v, nil
	}
	switch {
	case expect.Entries > last:
		return fail(v, last+1, fmt.Sprintf("the chain ends at entry %d but %d entries were published: entries were removed from its end", last, expect.Entries)), nil
	case expect.Hash == "":
	case found == 0 && expect.Entries > 0:
		return fail(v, expect.Entries, fmt.Sprintf("entry %d is not the published head %s: the chain was rewritten from there or before", expect.Entries, expect.Hash)), nil
	case found == 0:
		return fail(v, last+1, fmt.Sprintf("no entry has the published head hash %s: entries were removed from the chain's end or it was rewritten", expect.Hash)), nil
	case expect.Entries > 0 && found != expect.Entries:
		return fail(v, expect.Entries, fmt.Sprintf("the published head %s is entry %d, not entry %d", expect.Hash, found, expect.Entries)), nil
	}
	return v, nil
}

func fail(v *AuditVerification, seq int64, reason string) *AuditVerification {
	v.OK = false
	v.FirstBadSeq = seq
	v.Reason = reason
	return v
}

// auditDetail renders key=value pairs for an audit entry's detail. Values
// are the broker's own identifiers and decisions, never SQL results, lease
// tokens or patient data.
func auditDetail(kv ...string) string {
	var b strings.Builder
	for i := 0; i+1 < len(kv); i += 2 {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(kv[i])
		b.WriteByte('=')
		b.WriteString(fmt.Sprintf("%q", kv[i+1]))
	}
	return b.String()
}

// FindAuditEntries lists audit entries, oldest first. Admins only.
func (s *Service) FindAuditEntries(ctx context.Context, f AuditFilter) ([]*AuditEntry, int, error) {
	u, err := s.authorize(ctx, "audit.read", "audit", RoleAdmin)
	if err != nil {
		return nil, 0, err
	}
	f.Limit = pageLimit(f.Limit)
	var es []*AuditEntry
	var n int
	err = s.view(ctx, u, func(tx Tx) error {
		es, n, err = tx.FindAuditEntries(ctx, f)
		return err
	})
	return es, n, err
}

// VerifyAudit recomputes the audit chain. Admins only.
func (s *Service) VerifyAudit(ctx context.Context) (*AuditVerification, error) {
	if _, err := s.authorize(ctx, "audit.verify", "audit", RoleAdmin); err != nil {
		return nil, err
	}
	return VerifyChain(ctx, s.store, nil)
}

// AuditHead returns the audit chain's current head for the public
// register. Anyone may read it.
func (s *Service) AuditHead(ctx context.Context) (*AuditHead, error) {
	h := &AuditHead{}
	err := s.store.View(ctx, func(tx Tx) error {
		var err error
		h.Entries, h.Hash, err = tx.AuditHead(ctx)
		return err
	})
	if err != nil {
		return nil, err
	}
	return h, nil
}
