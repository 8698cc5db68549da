package trust

import (
	"crypto/ed25519"
	"crypto/subtle"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"filippo.io/edwards25519"
	"filippo.io/edwards25519/field"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshagent/meshagent/wire"
)

// PublicKeySize is the size of an Ed25519 public key on the wire.
const PublicKeySize = ed25519.PublicKeySize

// Domain prefixes of what this package signs: the same constants as in
// package wire, the one home of every domain, kept here for the callers
// that name them so.
const (
	DomainCredential = wire.DomainCredential
	DomainLink       = wire.DomainLink
	DomainRevocation = wire.DomainRevocation
)

// ed25519PeerIDPrefix is what precedes the raw key in the bytes of an
// Ed25519 peer ID: identity multihash (0x00), length 36 (0x24), then the
// protobuf PublicKey{Type: Ed25519 (0x08 0x01), Data: 32 bytes (0x12 0x20)}.
const ed25519PeerIDPrefix = "\x00\x24\x08\x01\x12\x20"

// PublicKey is an Ed25519 public key: an agent's identity or an anchor. Its
// text form is the libp2p peer ID ("12D3KooW..."), which carries the key.
type PublicKey [PublicKeySize]byte

// PublicKeyFromBytes copies a 32-byte raw key. It refuses (CodeWeakKey) a
// small-order key: see PublicKey.Weak.
func PublicKeyFromBytes(b []byte) (PublicKey, error) {
	var k PublicKey
	if len(b) != PublicKeySize {
		return k, fail(CodeMalformed, -1, "public key is %d bytes, want %d", len(b), PublicKeySize)
	}
	copy(k[:], b)
	if err := k.checkWeak(); err != nil {
		return PublicKey{}, err
	}
	return k, nil
}

// PublicKeyFromPeerID extracts the key from an Ed25519 peer ID. It refuses
// (CodeWeakKey) a small-order key: see PublicKey.Weak.
func PublicKeyFromPeerID(id peer.ID) (PublicKey, error) {
	var k PublicKey
	s := string(id)
	if len(s) != len(ed25519PeerIDPrefix)+PublicKeySize || s[:len(ed25519PeerIDPrefix)] != ed25519PeerIDPrefix {
		return k, fail(CodeMalformed, -1, "peer ID %q is not an Ed25519 peer ID", id.String())
	}
	copy(k[:], s[len(ed25519PeerIDPrefix):])
	if err := k.checkWeak(); err != nil {
		return PublicKey{}, err
	}
	return k, nil
}

// ParsePublicKey parses the text form of a key: an Ed25519 peer ID. Text
// comes from operators (flags, config files), so besides what
// PublicKeyFromPeerID refuses it also refuses a key that is not a point on
// the curve, which could never verify a signature.
func ParsePublicKey(s string) (PublicKey, error) {
	id, err := peer.Decode(s)
	if err != nil {
		return PublicKey{}, fail(CodeMalformed, -1, "not a peer ID: %q", s)
	}
	k, err := PublicKeyFromPeerID(id)
	if err != nil {
		return PublicKey{}, err
	}
	if err := k.checkPoint(); err != nil {
		return PublicKey{}, err
	}
	return k, nil
}

// smallOrderY holds the canonical encodings (little-endian) of the y
// coordinates of the eight points of order 1, 2, 4 and 8 of edwards25519:
// 1 (the identity), p-1 (order 2), 0 (the two points of order 4) and the
// two y of the four points of order 8. No other point has one of these y,
// so a key that decodes is small-order exactly when its y, reduced mod p,
// is among them, whatever its sign bit. It is the libsodium blocklist
// (crypto_sign_ed25519 has_small_order) with p and p+1 folded into 0 and 1
// by the reduction.
var smallOrderY = [5][32]byte{
	{},  // 0: order 4
	{1}, // 1: the identity
	{0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, // p-1: order 2
	{0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98, 0xf0,
		0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x05}, // order 8
	{0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f,
		0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a}, // order 8
}

// Weak reports whether k is a small-order point (8·k is the identity), in
// any of its encodings, canonical or not. For such a key a signature with
// S = 0 and a small-order R verifies for a good share of all messages
// (for the identity, for every message), so anyone can sign as it: it is
// refused wherever a key is accepted, and Verify fails for it. Keys that
// merely have a small-order component (mixed order) are not weak: signing
// for them still needs the discrete log of the prime-order part.
func (k PublicKey) Weak() bool {
	var y field.Element
	y.SetBytes(k[:]) // cannot fail on 32 bytes; ignores the sign bit and reduces mod p
	c := [32]byte(y.Bytes())
	for i := range smallOrderY {
		if c == smallOrderY[i] {
			return true
		}
	}
	return false
}

func (k PublicKey) checkWeak() error {
	if k.Weak() {
		return fail(CodeWeakKey, -1, "public key %s is a small-order Ed25519 point, for which anyone can sign", k)
	}
	return nil
}

// checkPoint refuses a key that does not decode as a curve point (and a
// weak one). Decoding costs a square root, about 5 µs, which is why only
// operator input and policies pay it: for the keys that come over the wire
// the signature check refuses such a key anyway.
func (k PublicKey) checkPoint() error {
	if _, err := new(edwards25519.Point).SetBytes(k[:]); err != nil {
		return fail(CodeMalformed, -1, "public key %s is not a point on the Ed25519 curve", k)
	}
	return k.checkWeak()
}

// PeerID returns the libp2p peer ID of the key.
func (k PublicKey) PeerID() peer.ID { return peer.ID(ed25519PeerIDPrefix + string(k[:])) }

// String returns the peer ID text form.
func (k PublicKey) String() string { return k.PeerID().String() }

// Equal compares two keys in constant time.
func (k PublicKey) Equal(o PublicKey) bool { return subtle.ConstantTimeCompare(k[:], o[:]) == 1 }

// IsZero reports whether k is the zero key (unset).
func (k PublicKey) IsZero() bool { return k == PublicKey{} }

// Verify checks sig over domain||msg. It accepts exactly what
// crypto/ed25519.Verify accepts (it runs curve25519-voi, which is faster:
// see verifySig), except that it fails for a weak key (see Weak), however
// the key got into a PublicKey.
func (k PublicKey) Verify(domain string, msg, sig []byte) bool {
	if len(sig) != ed25519.SignatureSize || k.Weak() {
		return false
	}
	buf := make([]byte, 0, len(domain)+len(msg))
	buf = append(buf, domain...)
	buf = append(buf, msg...)
	return verifySig(k, buf, sig)
}

// VerifyPrefixed is Verify for a message its caller already holds behind
// its domain: signed must be domain||msg (false otherwise). It spares
// Verify's copy of the two, which a receiver that keeps a private copy of
// the message anyway can make once.
func (k PublicKey) VerifyPrefixed(domain string, signed, sig []byte) bool {
	if len(signed) < len(domain) || string(signed[:len(domain)]) != domain {
		return false
	}
	if len(sig) != ed25519.SignatureSize || k.Weak() {
		return false
	}
	return verifySig(k, signed, sig)
}

// keyPair is the private half shared by the key roles below. x is priv
// expanded for signing (see expandedKey); priv stays for key files and
// libp2p.
type keyPair struct {
	priv ed25519.PrivateKey
	pub  PublicKey
	x    *expandedKey
}

func generate(r io.Reader) (keyPair, error) {
	pub, priv, err := ed25519.GenerateKey(r)
	if err != nil {
		return keyPair{}, fmt.Errorf("trust: generate key: %w", err)
	}
	var kp keyPair
	kp.priv = priv
	copy(kp.pub[:], pub)
	kp.x = expandKey(priv)
	return kp, nil
}

// sign returns crypto/ed25519's signature of domain||msg, byte for byte,
// at about half its cost (expandedKey; BENCHMARKS.md, issue 15, the
// signer).
func (kp keyPair) sign(domain string, msg []byte) []byte {
	return kp.x.sign(domain, msg)
}

// Identity is an agent's private identity key. Its public key is the agent's
// ID; the same key is the libp2p host key, so the TLS handshake proves it.
type Identity struct{ kp keyPair }

// GenerateIdentity makes a new identity key from r (crypto/rand.Reader).
func GenerateIdentity(r io.Reader) (*Identity, error) {
	kp, err := generate(r)
	if err != nil {
		return nil, err
	}
	return &Identity{kp}, nil
}

// IdentityFromLibp2p wraps a libp2p Ed25519 private key.
func IdentityFromLibp2p(k crypto.PrivKey) (*Identity, error) {
	kp, err := fromLibp2p(k)
	if err != nil {
		return nil, err
	}
	return &Identity{kp}, nil
}

// Public returns the public key.
func (i *Identity) Public() PublicKey { return i.kp.pub }

// PeerID returns the agent's peer ID.
func (i *Identity) PeerID() peer.ID { return i.kp.pub.PeerID() }

// Sign signs domain||msg.
func (i *Identity) Sign(domain string, msg []byte) []byte { return i.kp.sign(domain, msg) }

// Libp2pKey returns the key as a libp2p private key, for libp2p.Identity.
func (i *Identity) Libp2pKey() crypto.PrivKey {
	k, err := crypto.UnmarshalEd25519PrivateKey(i.kp.priv)
	if err != nil { // cannot happen: the key is a valid 64-byte Ed25519 key
		panic(err)
	}
	return k
}

// AnchorKey is a trust anchor's private key. It signs credentials, the first
// link of tokens and revocations. Keep it offline or on issuer agents only.
type AnchorKey struct{ kp keyPair }

// GenerateAnchorKey makes a new anchor key from r (crypto/rand.Reader).
func GenerateAnchorKey(r io.Reader) (*AnchorKey, error) {
	kp, err := generate(r)
	if err != nil {
		return nil, err
	}
	return &AnchorKey{kp}, nil
}

// Public returns the anchor's public key, the ID that meshes configure.
func (a *AnchorKey) Public() PublicKey { return a.kp.pub }

func fromLibp2p(k crypto.PrivKey) (keyPair, error) {
	if k.Type() != crypto.Ed25519 {
		return keyPair{}, fmt.Errorf("trust: key type %s is not Ed25519", k.Type())
	}
	raw, err := k.Raw()
	if err != nil || len(raw) != ed25519.PrivateKeySize {
		return keyPair{}, fmt.Errorf("trust: bad Ed25519 private key")
	}
	var kp keyPair
	kp.priv = ed25519.PrivateKey(raw)
	copy(kp.pub[:], raw[32:])
	kp.x = expandKey(kp.priv)
	return kp, nil
}

// PEM block types of key files. The type says the role, so that an anchor
// key is never loaded as an agent identity or the other way round.
const (
	pemIdentity = "MESHAGENT IDENTITY KEY"
	pemAnchor   = "MESHAGENT ANCHOR KEY"
)

// Save writes the identity key to path with mode 0600. It refuses to
// overwrite an existing file.
func (i *Identity) Save(path string) error { return saveKey(path, pemIdentity, i.kp) }

// Save writes the anchor key to path with mode 0600. It refuses to overwrite
// an existing file.
func (a *AnchorKey) Save(path string) error { return saveKey(path, pemAnchor, a.kp) }

// LoadIdentity reads an identity key file written by Save. It refuses
// (ErrKeyPermissions) a file that others could read or replace: see
// checkKeyFile.
func LoadIdentity(path string) (*Identity, error) {
	kp, err := loadKey(path, pemIdentity)
	if err != nil {
		return nil, err
	}
	return &Identity{kp}, nil
}

// LoadAnchorKey reads an anchor key file written by Save, refusing
// (ErrKeyPermissions) one that others could read or replace.
func LoadAnchorKey(path string) (*AnchorKey, error) {
	kp, err := loadKey(path, pemAnchor)
	if err != nil {
		return nil, err
	}
	return &AnchorKey{kp}, nil
}

func saveKey(path, typ string, kp keyPair) error {
	k, err := crypto.UnmarshalEd25519PrivateKey(kp.priv)
	if err != nil {
		return fmt.Errorf("trust: %w", err)
	}
	der, err := crypto.MarshalPrivateKey(k)
	if err != nil {
		return fmt.Errorf("trust: %w", err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	return WriteFileExclusive(path, data, 0o600)
}

// WriteFileExclusive writes data to a new file at path with the given mode;
// it fails if the file exists, so that nothing is ever overwritten by
// accident. The file is written to a temporary name and renamed into place,
// so a crash leaves either nothing or the whole file.
func WriteFileExclusive(path string, data []byte, mode os.FileMode) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("trust: %s already exists; refusing to overwrite it", path)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("trust: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("trust: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("trust: write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("trust: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("trust: write %s: %w", path, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil { // fails if path appeared meanwhile
		return fmt.Errorf("trust: %s: %w", path, err)
	}
	return nil
}

func loadKey(path, typ string) (keyPair, error) {
	f, err := os.Open(path)
	if err != nil {
		return keyPair{}, fmt.Errorf("trust: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return keyPair{}, fmt.Errorf("trust: %w", err)
	}
	if err := checkKeyFile(path, st); err != nil {
		return keyPair{}, err
	}
	data, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return keyPair{}, fmt.Errorf("trust: read %s: %w", path, err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return keyPair{}, fmt.Errorf("trust: %s is not a PEM key file", path)
	}
	if block.Type != typ {
		return keyPair{}, fmt.Errorf("trust: %s holds a %q, want a %q", path, block.Type, typ)
	}
	k, err := crypto.UnmarshalPrivateKey(block.Bytes)
	if err != nil {
		return keyPair{}, fmt.Errorf("trust: %s: %w", path, err)
	}
	return fromLibp2p(k)
}

// checkKeyFile refuses, as ssh's StrictModes does, a key file that others
// could read or replace: one that group or others can access, one owned by
// another user than the one this process runs as (euid), and one in a
// directory that another user owns or that group or others can write (who
// can write the directory can swap the file). A directory owned by root is
// accepted: root can read the key anyway. st is the opened file's, so
// what is checked is what is read.
func checkKeyFile(path string, st os.FileInfo) error {
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %04o, group or others can access it; run: chmod 600 %s", ErrKeyPermissions, path, st.Mode().Perm(), path)
	}
	euid, unix := processOwner()
	if !unix {
		return nil
	}
	if uid := fileOwner(st); uid != euid {
		return fmt.Errorf("%w: %s is owned by uid %d, not by uid %d that runs this process; run: sudo chown %d %s", ErrKeyPermissions, path, uid, euid, euid, path)
	}
	dir := filepath.Dir(path)
	dst, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("trust: %w", err)
	}
	if uid := fileOwner(dst); uid != euid && uid != 0 {
		return fmt.Errorf("%w: directory %s of key %s is owned by uid %d, not by uid %d that runs this process or root; run: sudo chown %d %s", ErrKeyPermissions, dir, filepath.Base(path), uid, euid, euid, dir)
	}
	if dst.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%w: directory %s of key %s has mode %04o, group or others can replace the key; run: chmod go-w %s (or move the key into a directory only you can write)", ErrKeyPermissions, dir, filepath.Base(path), dst.Mode().Perm(), dir)
	}
	return nil
}

// DecodePEM returns the bytes of the first PEM block of type typ in data; if
// data holds no PEM block at all, data itself is returned (raw form).
func DecodePEM(data []byte, typ string) ([]byte, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return data, nil
	}
	if block.Type != typ {
		return nil, fmt.Errorf("trust: PEM block is %q, want %q", block.Type, typ)
	}
	return block.Bytes, nil
}

// EncodePEM wraps b in a PEM block of type typ.
func EncodePEM(b []byte, typ string) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b})
}
