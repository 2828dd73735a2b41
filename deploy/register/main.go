// Command register is deploy/compose.yaml's registration step: an admin
// registers each site with the broker before its agent starts (the broker
// refuses agents of unregistered sites, and the agent then stops). It does
// what `tre site add` does for each site, but a site that is already
// registered (409) counts as done, so that every `docker compose up` can run
// it. It is a static binary in the images because they have no shell.
//
//	register -broker URL -token-file FILE [-ca FILE] ID=NAME=ORGANISATION...
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/nhs-tre/tre/deploy/internal/catrust"
)

func main() {
	broker := flag.String("broker", "", "broker base URL")
	tokenFile := flag.String("token-file", "", "file holding an admin's bearer token")
	ca := flag.String("ca", "", "PEM file of the CA the broker's certificate chains to")
	flag.Parse()
	if *broker == "" || *tokenFile == "" || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: register -broker URL -token-file FILE [-ca FILE] ID=NAME=ORGANISATION...")
		os.Exit(2)
	}
	if err := run(*broker, *tokenFile, *ca, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "register:", err)
		os.Exit(1)
	}
}

func run(broker, tokenFile, caFile string, sites []string) error {
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		return err
	}
	token := strings.TrimSpace(string(tok))
	tr, err := catrust.Transport(caFile)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	for _, s := range sites {
		parts := strings.SplitN(s, "=", 3)
		if len(parts) != 3 {
			return fmt.Errorf("site %q: want ID=NAME=ORGANISATION", s)
		}
		body, _ := json.Marshal(map[string]string{"id": parts[0], "name": parts[1], "organisation": parts[2]})
		req, err := http.NewRequest(http.MethodPost, strings.TrimSuffix(broker, "/")+"/api/v1/sites", bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("site %s: %w", parts[0], err)
		}
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		switch {
		case resp.StatusCode/100 == 2:
			fmt.Printf("site %s registered\n", parts[0])
		case resp.StatusCode == http.StatusConflict:
			fmt.Printf("site %s was already registered\n", parts[0])
		default:
			return fmt.Errorf("site %s: %s: %s", parts[0], resp.Status, bytes.TrimSpace(msg))
		}
	}
	return nil
}
