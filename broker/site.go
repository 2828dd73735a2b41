package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nhs-tre/tre/queries"
)

// siteObject is a site's audit object.
func siteObject(id string) string { return "site/" + id }

// agentCaller authorises an agent call made for siteID ("" when the call
// names no site, such as a heartbeat): the caller must hold the agent role
// and carry a site claim naming siteID. Whether that site is registered is
// checked inside the call's transaction (registeredSite).
func (s *Service) agentCaller(ctx context.Context, action, object, siteID string) (*User, error) {
	u, err := s.authorize(ctx, action, object, RoleAgent)
	if err != nil {
		return nil, err
	}
	switch {
	case u.Site == "":
		return nil, s.settle(ctx, u, deny(action, object, "this agent token names no site: an agent token must carry the site it acts for"))
	case siteID != "" && siteID != u.Site:
		return nil, s.settle(ctx, u, deny(action, object, "this agent token acts for site %q, not %q", u.Site, siteID))
	}
	return u, nil
}

// registeredSite refuses an agent whose site an admin has not registered
// and records that the agent called (its health), with the version it
// reported if any.
func registeredSite(ctx context.Context, tx Tx, u *User, action, object, version string, now time.Time) error {
	site, err := tx.FindSite(ctx, u.Site)
	if ErrorCode(err) == ENOTFOUND || err == nil && !site.Registered {
		return deny(action, object, "site %q is not registered: an admin must register it (tre site add) before its agent may act", u.Site)
	} else if err != nil {
		return err
	}
	return tx.TouchSite(ctx, u.Site, now, version)
}

// validVersion checks an agent's reported version: short printable text.
func validVersion(v string) error {
	if len(v) > 100 {
		return Errorf(EINVALID, "agent version is longer than 100 characters")
	}
	for _, r := range v {
		if r < 0x20 || r > 0x7e {
			return Errorf(EINVALID, "agent version may contain only printable ASCII")
		}
	}
	return nil
}

// CreateSite registers an NHS site so that its agent may act. Admins only.
// A site an agent announced before registration existed is registered in
// place; a registered site cannot be registered again.
func (s *Service) CreateSite(ctx context.Context, site *Site) error {
	u, err := s.authorize(ctx, "site.create", "sites", RoleAdmin)
	if err != nil {
		return err
	}
	if site == nil {
		return Errorf(EINVALID, "site is required")
	}
	site.Name, site.Organisation = strings.TrimSpace(site.Name), strings.TrimSpace(site.Organisation)
	if err := validName("site id", site.ID); err != nil {
		return err
	}
	for _, f := range []struct{ name, value string }{{"name", site.Name}, {"organisation", site.Organisation}} {
		switch {
		case f.value == "":
			return Errorf(EINVALID, "site %s is required", f.name)
		case len(f.value) > 200:
			return Errorf(EINVALID, "site %s is longer than 200 characters", f.name)
		}
	}
	now := s.clock()
	return s.update(ctx, u, func(tx Tx) error {
		old, err := tx.FindSite(ctx, site.ID)
		switch {
		case ErrorCode(err) == ENOTFOUND:
			old = &Site{}
		case err != nil:
			return err
		case old.Registered:
			return Errorf(ECONFLICT, "site %q is already registered", site.ID)
		}
		site.Registered, site.RegisteredBy, site.RegisteredAt = true, u.Subject, now
		site.LastSeen, site.Version, site.Datasets = old.LastSeen, old.Version, []string{}
		if err := tx.CreateSite(ctx, site); err != nil {
			return err
		}
		return appendAudit(ctx, tx, now, u.Subject, "site.create", siteObject(site.ID),
			auditDetail("name", site.Name, "organisation", site.Organisation))
	})
}

// PublishCatalog stores the catalog a site agent publishes for its own
// registered site. Several sites may hold one dataset when their catalogs
// agree (agreeWithHolders): a query over it then runs at each of them
// (federation.go). A catalog that disagrees is refused naming the first
// difference.
func (s *Service) PublishCatalog(ctx context.Context, siteID, version string, cat *queries.Catalog) error {
	u, err := s.agentCaller(ctx, "catalog.publish", siteObject(siteID), siteID)
	if err != nil {
		return err
	}
	if err := validName("site id", siteID); err != nil {
		return err
	}
	if err := validVersion(version); err != nil {
		return err
	}
	if cat == nil {
		return Errorf(EINVALID, "catalog is required")
	}
	if err := cat.Validate(); err != nil {
		return Errorf(EINVALID, "catalog %q is not valid: %v", cat.Dataset, err)
	}
	if err := validName("dataset", cat.Dataset); err != nil {
		return err
	}
	body, err := json.Marshal(cat)
	if err != nil {
		return fmt.Errorf("encode catalog: %w", err)
	}
	hash := hashString(string(body))
	now := s.clock()
	return s.update(ctx, u, func(tx Tx) error {
		if err := registeredSite(ctx, tx, u, "catalog.publish", siteObject(siteID), version, now); err != nil {
			return err
		}
		holders, err := tx.FindCatalogHolders(ctx, cat.Dataset, true)
		if err != nil {
			return err
		}
		if err := agreeWithHolders(cat, siteID, holders); err != nil {
			return err
		}
		if err := tx.PutCatalog(ctx, siteID, cat.Dataset, hash, body, now); err != nil {
			return err
		}
		sites := holderIDs(holders)
		if !slices.Contains(sites, siteID) {
			sites = append(sites, siteID)
			slices.Sort(sites)
		}
		return appendAudit(ctx, tx, now, u.Subject, "catalog.publish", "dataset/"+cat.Dataset,
			auditDetail("site", siteID, "catalog_sha256", hash, "sites", strings.Join(sites, ",")))
	})
}

// FindDatasets returns every published catalog.
func (s *Service) FindDatasets(ctx context.Context) ([]*queries.Catalog, error) {
	if _, err := caller(ctx); err != nil {
		return nil, err
	}
	var bodies [][]byte
	if err := s.store.View(ctx, func(tx Tx) error {
		var err error
		bodies, err = tx.FindCatalogs(ctx)
		return err
	}); err != nil {
		return nil, err
	}
	out := make([]*queries.Catalog, 0, len(bodies))
	for _, b := range bodies {
		var c queries.Catalog
		if err := json.Unmarshal(b, &c); err != nil {
			return nil, fmt.Errorf("decode stored catalog: %w", err)
		}
		out = append(out, &c)
	}
	return out, nil
}

// FindSites returns every site with its agent's health. Admins only.
func (s *Service) FindSites(ctx context.Context) ([]*Site, error) {
	u, err := s.authorize(ctx, "sites.list", "sites", RoleAdmin)
	if err != nil {
		return nil, err
	}
	var sites []*Site
	err = s.view(ctx, u, func(tx Tx) error {
		sites, err = tx.FindSites(ctx)
		return err
	})
	return sites, err
}
