package sqlstore

import (
	"context"
	"time"

	"github.com/nhs-tre/tre/broker"
)

// ---- sites and catalogs ----

func (t *tx) CreateSite(ctx context.Context, s *broker.Site) error {
	_, err := t.exec(ctx, `INSERT INTO sites (id, last_seen, version, name, organisation, registered_by, registered_at)
		VALUES (?, 0, '', ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET name = excluded.name, organisation = excluded.organisation,
		registered_by = excluded.registered_by, registered_at = excluded.registered_at`,
		s.ID, s.Name, s.Organisation, s.RegisteredBy, micros(s.RegisteredAt))
	return err
}

// siteColumns are the columns scanSite reads.
const siteColumns = `s.id, s.name, s.organisation, s.registered_by, s.registered_at, s.last_seen, s.version`

func scanSite(sc scanner) (*broker.Site, error) {
	var s broker.Site
	var registered, seen int64
	if err := sc.Scan(&s.ID, &s.Name, &s.Organisation, &s.RegisteredBy, &registered, &seen, &s.Version); err != nil {
		return nil, err
	}
	s.RegisteredAt, s.LastSeen = fromMicros(registered), fromMicros(seen)
	s.Registered = registered != 0
	s.Datasets = []string{}
	return &s, nil
}

func (t *tx) FindSite(ctx context.Context, id string) (*broker.Site, error) {
	rows, err := t.query(ctx, `SELECT `+siteColumns+` FROM sites s WHERE s.id = ?`, id)
	if err != nil {
		return nil, err
	}
	sites, err := collect(rows, scanSite)
	if err != nil {
		return nil, err
	}
	if len(sites) == 0 {
		return nil, broker.Errorf(broker.ENOTFOUND, "site %q not found", id)
	}
	return sites[0], nil
}

func (t *tx) TouchSite(ctx context.Context, id string, at time.Time, version string) error {
	_, err := t.exec(ctx, `UPDATE sites SET last_seen = ?, version = CASE WHEN ? = '' THEN version ELSE ? END WHERE id = ?`,
		micros(at), version, version, id)
	return err
}

func (t *tx) PutCatalog(ctx context.Context, siteID, dataset, hash string, body []byte, at time.Time) error {
	_, err := t.exec(ctx, `INSERT INTO catalogs (dataset, site_id, hash, body, published_at, since) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (dataset, site_id) DO UPDATE SET hash = excluded.hash, body = excluded.body,
		published_at = excluded.published_at`,
		dataset, siteID, hash, string(body), micros(at), micros(at))
	return err
}

func (t *tx) FindCatalog(ctx context.Context, dataset string, wantBody bool) (string, string, []byte, error) {
	var site, hash, body string
	var err error
	if wantBody {
		err = t.queryRow(ctx, `SELECT site_id, hash, body FROM catalogs WHERE dataset = ? ORDER BY since, site_id LIMIT 1`,
			[]any{dataset}, &site, &hash, &body)
	} else {
		err = t.queryRow(ctx, `SELECT site_id, hash FROM catalogs WHERE dataset = ? ORDER BY since, site_id LIMIT 1`,
			[]any{dataset}, &site, &hash)
	}
	if err != nil {
		return "", "", nil, notFound(err, "dataset %q not found", dataset)
	}
	if !wantBody {
		return site, hash, nil, nil
	}
	return site, hash, []byte(body), nil
}

func (t *tx) FindCatalogHolders(ctx context.Context, dataset string, wantBody bool) ([]broker.CatalogHolder, error) {
	body := `''`
	if wantBody {
		body = `body`
	}
	rows, err := t.query(ctx, `SELECT site_id, hash, `+body+`, since FROM catalogs WHERE dataset = ? ORDER BY since, site_id`, dataset)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc scanner) (broker.CatalogHolder, error) {
		var h broker.CatalogHolder
		var body string
		var since int64
		err := sc.Scan(&h.SiteID, &h.Hash, &body, &since)
		if body != "" {
			h.Body = []byte(body)
		}
		h.Since = fromMicros(since)
		return h, err
	})
}

// FindCatalogs returns each dataset's catalog once: its earliest holder's
// (the holders' catalogs agree but for site-local parts).
func (t *tx) FindCatalogs(ctx context.Context) ([][]byte, error) {
	rows, err := t.query(ctx, `SELECT c.body FROM catalogs c WHERE NOT EXISTS (SELECT 1 FROM catalogs e
		WHERE e.dataset = c.dataset AND (e.since < c.since OR e.since = c.since AND e.site_id < c.site_id)) ORDER BY c.dataset`)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc scanner) ([]byte, error) {
		var b string
		err := sc.Scan(&b)
		return []byte(b), err
	})
}

func (t *tx) FindSites(ctx context.Context) ([]*broker.Site, error) {
	rows, err := t.query(ctx, `SELECT `+siteColumns+`, COALESCE(c.dataset, '')
		FROM sites s LEFT JOIN catalogs c ON c.site_id = s.id ORDER BY s.id, c.dataset`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []*broker.Site{}
	for rows.Next() {
		var dataset string
		s, err := scanSite(scannerFunc(func(dest ...any) error { return rows.Scan(append(dest, &dataset)...) }))
		if err != nil {
			return nil, err
		}
		if len(out) == 0 || out[len(out)-1].ID != s.ID {
			out = append(out, s)
		}
		if dataset != "" {
			last := out[len(out)-1]
			last.Datasets = append(last.Datasets, dataset)
		}
	}
	return out, rows.Err()
}
