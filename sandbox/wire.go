package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"io"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// The plugin contract. There is no .proto file: the one service is described
// by hand and its messages are the protobuf well-known BytesValue carrying
// JSON, so no code generator is needed and the default gRPC codec applies.

// handshake is shared by host and child; a mismatch stops the child before
// it serves anything. The cookie is not a secret: it only keeps the binary
// from serving when run by hand.
func handshake() plugin.HandshakeConfig {
	return plugin.HandshakeConfig{
		ProtocolVersion:  1,
		MagicCookieKey:   "TRE_SANDBOX_PLUGIN",
		MagicCookieValue: "d5d3c1f0-tre-sandbox-v1",
	}
}

const (
	pluginName  = "sandbox"
	serviceName = "tre.sandbox.v1.Sandbox"
	runMethod   = "/" + serviceName + "/Run"
	// chunkSize is the payload of one streamed frame; well under the
	// receive cap so a frame never trips it.
	chunkSize = 64 << 10
	// maxRecvMsg caps every message the host accepts from the child.
	maxRecvMsg = 256 << 10
)

// request is the job as the child receives it: the job, the site's
// catalog the child compiles it against, and test hooks (set only through
// export_test.go; a production child refuses them). Raw runs SQL past the
// compiler, Probe attempts forbidden operations, and TestNoise, when not 0,
// replaces the noise of the statistics with that fixed offset (partition
// selection keeps the library's).
type request struct {
	job.Job
	Catalog   *queries.Catalog `json:"catalog"`
	Raw       bool             `json:"raw,omitempty"`
	Probe     bool             `json:"probe,omitempty"`
	TestNoise float64          `json:"test_noise,omitempty"`
	// DryRun asks the child for the codes of the job's codelists absent
	// from the data (Runner.DryRun, over synthetic data only; a site's
	// agent calls Run, which never sets it).
	DryRun bool `json:"dry_run,omitempty"`
	// absent is where Runner.run leaves the child's Absent (host side).
	absent []job.AbsentCodes
}

// frame is one streamed message from the child. Data frames carry a slice
// of the JSON-encoded response; the last frame has Last set, or Error.
type frame struct {
	Data  []byte     `json:"data,omitempty"`
	Last  bool       `json:"last,omitempty"`
	Error *wireError `json:"error,omitempty"`
}

type wireError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// response is what the child returns: a protected result (or a federated
// part's partial result), or (test hooks only) raw-SQL containment and syscall probe outcomes.
type response struct {
	Result *dp.Result `json:"result,omitempty"`
	// Partial is a federated part's answer (job.Job.Partial), in place of
	// Result.
	Partial *dp.Partial    `json:"partial,omitempty"`
	Layers  []string       `json:"layers"`
	Raw     *rawOutcome    `json:"raw,omitempty"`
	Probes  []probeOutcome `json:"probes,omitempty"`
	// Snapshot is what a builder child built (snapshot.go).
	Snapshot *snapshotBuilt `json:"snapshot,omitempty"`
	// Absent answers a dry run's request (request.DryRun).
	Absent []job.AbsentCodes `json:"absent,omitempty"`
}

// rawOutcome describes what raw SQL did, without its values: the test hook
// reports the shape and a hash, never the rows.
type rawOutcome struct {
	Rows  int `json:"rows"`
	Bytes int `json:"bytes"`
}

// probeOutcome is one forbidden operation the child attempted after
// hardening.
type probeOutcome struct {
	Name    string `json:"name"`
	Blocked bool   `json:"blocked"`
	Errno   string `json:"errno,omitempty"`
}

// runServer is implemented by the child.
type runServer interface {
	run(ctx context.Context, req []byte, send func(frame) error) error
}

func runHandler(srv any, stream grpc.ServerStream) error {
	in := new(wrapperspb.BytesValue)
	if err := stream.RecvMsg(in); err != nil {
		return err
	}
	return srv.(runServer).run(stream.Context(), in.GetValue(), func(f frame) error {
		b, err := json.Marshal(f)
		if err != nil {
			return err
		}
		return stream.SendMsg(wrapperspb.Bytes(b))
	})
}

func serviceDesc() *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: serviceName,
		HandlerType: (*runServer)(nil),
		Streams: []grpc.StreamDesc{{
			StreamName:    "Run",
			Handler:       runHandler,
			ServerStreams: true,
		}},
		Metadata: "tre/sandbox/v1",
	}
}

// grpcPlugin is the go-plugin glue: the child registers its server, the host
// gets a client over the connection go-plugin set up (AutoMTLS, unix socket).
type grpcPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	server runServer // child side only
}

func (p *grpcPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	s.RegisterService(serviceDesc(), p.server)
	return nil
}

func (p *grpcPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &client{conn: c}, nil
}

// client is the host's view of one child.
type client struct{ conn *grpc.ClientConn }

// call sends req and reassembles the streamed response, refusing to buffer
// more than maxBytes. Errors from the child come back as *job.Error.
func (c *client) call(ctx context.Context, req *request, maxBytes int64) (*response, error) {
	in, err := json.Marshal(req)
	if err != nil {
		return nil, job.Errorf(job.CodeInternal, "encode job")
	}
	stream, err := c.conn.NewStream(ctx, &serviceDesc().Streams[0], runMethod)
	if err != nil {
		return nil, err
	}
	if err := stream.SendMsg(wrapperspb.Bytes(in)); err != nil {
		return nil, err
	}
	if err := stream.CloseSend(); err != nil {
		return nil, err
	}
	var buf []byte
	for {
		m := new(wrapperspb.BytesValue)
		if err := stream.RecvMsg(m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, job.Errorf(job.CodeCrashed, "sandbox ended the stream without a result")
			}
			return nil, err
		}
		var f frame
		if err := json.Unmarshal(m.GetValue(), &f); err != nil {
			return nil, job.Errorf(job.CodeInternal, "malformed frame from sandbox")
		}
		if f.Error != nil {
			return nil, &job.Error{Code: safeCode(f.Error.Code), Message: f.Error.Message}
		}
		if int64(len(buf)+len(f.Data)) > maxBytes {
			return nil, job.Errorf(job.CodeTooLarge, "result exceeds %d bytes", maxBytes)
		}
		buf = append(buf, f.Data...)
		if f.Last {
			break
		}
	}
	var resp response
	if err := json.Unmarshal(buf, &resp); err != nil {
		return nil, job.Errorf(job.CodeInternal, "malformed result from sandbox")
	}
	return &resp, nil
}

// safeCode maps whatever code arrived to a known one, so a confused or
// compromised child cannot invent codes the broker would pass on.
func safeCode(code string) string {
	switch code {
	case job.CodeRefused, job.CodeInvalid, job.CodeTimeout, job.CodeMemory, job.CodeTooLarge,
		job.CodeCrashed, job.CodeUnavailable, job.CodeInternal:
		return code
	}
	return job.CodeInternal
}

// sendResponse streams resp in chunks, then the last frame.
func sendResponse(resp *response, send func(frame) error) error {
	b, err := json.Marshal(resp)
	if err != nil {
		return err
	}
	for len(b) > chunkSize {
		if err := send(frame{Data: b[:chunkSize]}); err != nil {
			return err
		}
		b = b[chunkSize:]
	}
	return send(frame{Data: b, Last: true})
}
