// Command healthcheck is the containers' health probe: the tre images have
// no shell and no curl, so Docker's HEALTHCHECK runs this static binary.
//
//	healthcheck [-ca FILE] URL
//
// It exits 0 when a GET of URL answers 2xx within eight seconds, 1 otherwise.
// With -ca the server's certificate must chain to FILE (the broker's own
// CA: the probe dials the container's loopback by the certificate's name).
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/nhs-tre/tre/deploy/internal/catrust"
)

func main() {
	ca := flag.String("ca", "", "PEM file of the CA the server's certificate must chain to")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: healthcheck [-ca FILE] URL")
		os.Exit(2)
	}
	if err := probe(flag.Arg(0), *ca); err != nil {
		fmt.Fprintln(os.Stderr, "unhealthy:", err)
		os.Exit(1)
	}
}

func probe(url, caFile string) error {
	tr, err := catrust.Transport(caFile)
	if err != nil {
		return err
	}
	c := &http.Client{Transport: tr, Timeout: 8 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s answered %s", url, resp.Status)
	}
	return nil
}
