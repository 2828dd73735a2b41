package site

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// Client is the agent's Broker over HTTP: the API client, with the broker's
// answers turned into the sentinels the agent branches on.
type Client struct{ API *api.Client }

func (c *Client) PublishCatalog(ctx context.Context, siteID string, cat *queries.Catalog) error {
	return refusal(c.API.PublishCatalog(ctx, siteID, cat))
}

func (c *Client) Lease(ctx context.Context, siteID string) (*job.Job, string, error) {
	l, err := c.API.Lease(ctx, siteID)
	if err != nil || l == nil {
		return nil, "", refusal(err)
	}
	return &l.Job, l.Token, nil
}

func (c *Client) Codelist(ctx context.Context, name string) ([]job.CodelistCode, error) {
	cl, err := c.API.Codelist(ctx, name)
	if err != nil {
		return nil, refusal(err)
	}
	return cl.Codes, nil
}

func (c *Client) Heartbeat(ctx context.Context, queryID int64, token string) error {
	_, err := c.API.Heartbeat(ctx, queryID, token)
	return leaseError(err)
}

func (c *Client) Complete(ctx context.Context, queryID int64, token string, res *dp.Result) error {
	return leaseError(c.API.Complete(ctx, queryID, token, *res))
}

func (c *Client) CompletePartial(ctx context.Context, queryID int64, token string, part *dp.Partial) error {
	return leaseError(c.API.CompletePartial(ctx, queryID, token, part))
}

func (c *Client) Fail(ctx context.Context, queryID int64, token, code, message string) error {
	return leaseError(c.API.Fail(ctx, queryID, token, code, message))
}

// leaseError turns the broker's "this lease is not yours any more" (409)
// into the sentinel the agent branches on, and its other refusals into
// ErrRefused.
func leaseError(err error) error {
	var ae *api.Error
	if errors.As(err, &ae) && ae.Code == broker.ECONFLICT {
		return fmt.Errorf("%w: %s", ErrLeaseLost, ae.Message)
	}
	return refusal(err)
}

// refusal marks the broker's answers that retrying cannot change — a 4xx
// other than a timeout or a rate limit: a token for another site or none,
// an unregistered site, a dataset another site publishes, an expired token
// — as ErrRefused, so the agent stops with the broker's reason instead of
// retrying forever. Outages (5xx, network errors) are returned as they are
// and retried.
func refusal(err error) error {
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status < 400 || ae.Status > 499 ||
		ae.Status == http.StatusRequestTimeout || ae.Status == http.StatusTooManyRequests {
		return err
	}
	return fmt.Errorf("%w (HTTP %d): %s", ErrRefused, ae.Status, ae.Message)
}

// HTTPClient is the agent's HTTP client to the broker: it trusts caFile
// (if set) and presents the client certificate certFile/keyFile for mutual
// TLS (if set).
func HTTPClient(caFile, certFile, keyFile string) (*http.Client, error) {
	if caFile == "" && certFile == "" {
		return &http.Client{Timeout: 60 * time.Second}, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s holds no PEM certificates", caFile)
		}
		tc.RootCAs = pool
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	return &http.Client{Timeout: 60 * time.Second, Transport: tr}, nil
}

// ReadTokenFile reads a bearer token, refusing files others can read.
func ReadTokenFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("token file %s is readable by other users (mode %v): chmod 600 it", path, fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return token, nil
}
