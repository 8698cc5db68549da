// Package trust holds meshagent's keys, trust anchors, agent credentials,
// capability tokens and revocation records.
//
// Everything here is a pure function of its input and of the time passed in:
// the package does no network I/O and reads no clock, so every check can be
// tested at an exact instant, fuzzed and benchmarked. (Key files are the one
// exception: LoadIdentity and friends read and write the files they are given.)
//
// A mesh trusts one or more anchor keys. An anchor signs credentials (an
// agent's certificate, binding its Ed25519 identity key and name to the mesh)
// and the first link of capability tokens. A token is a chain of signed links;
// each link names its holder, an explicit list of verb:resource scopes, the
// subset it may delegate, a validity window and a unique ID, and each further
// link is signed by the holder of the link before it and may only narrow what
// that link granted. Every rejection is an *Error with a stable Code and, for
// a chain, the index of the failing link.
package trust
