package tapv1

// ObserveMethod is the gRPC method path of Tap.Observe. This package has no gRPC stubs (buf.gen.yaml
// excludes the service from protoc-gen-go-grpc) so that weft-proxy, which links no grpc-go, can import
// the messages: the proxy serves the method with identity/grpcwire, weft-control registers it with
// grpc-go's ServiceDesc by hand (cmd/weft-control/tap.go).
const ObserveMethod = "/weft.tap.v1.Tap/Observe"
