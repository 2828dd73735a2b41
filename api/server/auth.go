package server

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/nhs-tre/tre/api/auth"
	"github.com/nhs-tre/tre/broker"
)

// require authenticates the bearer token and checks that the caller holds
// one of roles. On success the caller travels in the request context.
func (s *Server) require(roles ...broker.Role) gin.HandlerFunc {
	return func(c *gin.Context) {
		action := c.Request.Method + " " + c.FullPath()
		raw, ok := bearerToken(c.Request)
		if !ok {
			s.writeError(c, broker.Errorf(broker.EUNAUTHORIZED, "missing bearer token"))
			return
		}
		u, err := s.cfg.Verifier.Verify(c.Request.Context(), raw)
		if err != nil {
			reason := "invalid token"
			var ae *auth.TokenError
			if errors.As(err, &ae) {
				reason = ae.Reason
			}
			s.recordAuthFailure(c, "", action, reason)
			s.writeError(c, broker.Errorf(broker.EUNAUTHORIZED, "%s", reason))
			return
		}
		c.Set(keySubject, u.Subject)
		allowed := false
		for _, r := range roles {
			allowed = allowed || u.HasRole(r)
		}
		if !allowed {
			s.recordAuthFailure(c, u.Subject, action, "missing role")
			names := make([]string, len(roles))
			for i, r := range roles {
				names[i] = string(r)
			}
			s.writeError(c, broker.Errorf(broker.EFORBIDDEN, "this action needs one of the roles: %s", strings.Join(names, ", ")))
			return
		}
		c.Request = c.Request.WithContext(broker.NewContext(c.Request.Context(), u))
		c.Next()
	}
}

// recordAuthFailure counts a refused request against its source address
// (the connection's, never a forwarded header a client could forge); the
// broker aggregates them per source into the audit chain. It uses a
// detached context: a record due must be written even if the caller hangs
// up.
func (s *Server) recordAuthFailure(c *gin.Context, subject, action, reason string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request.Context()), 5*time.Second)
	defer cancel()
	s.svc.RecordAuthFailure(ctx, broker.AuthFailure{Source: c.RemoteIP(), Subject: subject, Action: action, Reason: reason})
}

// bearerToken extracts the token from "Authorization: Bearer <token>".
func bearerToken(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}
