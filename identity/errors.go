package identity

import "errors"

// The kinds of failure of Certify. Code wraps them with %w and context; the gRPC edge (Server.Certify)
// turns each into its status code, once; anything else is codes.Internal.
var (
	// ErrUnauthenticated: the token is missing, malformed, expired, for another audience, or not a
	// ServiceAccount's. → codes.Unauthenticated
	ErrUnauthenticated = errors.New("token rejected")
	// ErrInvalidRequest: the CSR or the request is malformed or asks for something a workload may not
	// have. → codes.InvalidArgument
	ErrInvalidRequest = errors.New("invalid request")
	// ErrIdentityMismatch: a well-formed request asks for an identity other than the token's.
	// → codes.FailedPrecondition
	ErrIdentityMismatch = errors.New("requested identity does not match the token")
	// ErrNoIssuer: the CA has no valid issuer (not loaded yet, or expired). → codes.Unavailable
	ErrNoIssuer = errors.New("no issuer")
	// ErrTokenCheckUnavailable: the token could not be checked (the apiserver is unreachable).
	// → codes.Unavailable
	ErrTokenCheckUnavailable = errors.New("token check unavailable")
)
