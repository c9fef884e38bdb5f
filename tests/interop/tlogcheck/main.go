// Command tlogcheck checks otaudit's transparency-log artifacts with an
// implementation otaudit did not write: Go's golang.org/x/mod/sumdb/note
// (C2SP signed notes, Ed25519) and golang.org/x/mod/sumdb/tlog (RFC 6962
// Merkle trees, proofs and tiles), as packaged by Debian
// (golang-golang-x-mod-dev).
//
// It reads one JSON document on stdin, {"checks": [CHECK, ...]}, and writes
// {"results": [RESULT, ...]} on stdout, one result per check and in order.
// Every result has "ok" (bool) and "error" ("" when ok), plus the outputs of
// its kind. Hashes are standard base64 everywhere. The kinds:
//
//	note         {note, vkey}: note.Open; outputs text, signers, unverified.
//	inclusion    {index, size, leaf_hash, proof, root}: tlog.CheckRecord.
//	consistency  {old, new, old_root, new_root, proof}: tlog.CheckTree.
//	tiles        {dir | url [, authorization], size, root | checkpoint, vkey,
//	             leaf_indexes, consistency_from}: reads C2SP tiles through
//	             tlog.TileHashReader; outputs tree_hash, leaf_hashes,
//	             inclusion_proofs (tlog.ProveRecord), consistency_proofs
//	             (tlog.ProveTree), old_roots (tlog.TreeHash) and tiles_read
//	             (the C2SP paths read), each checked against the root.
//	tlog-proof   {text, vkey, leaf_hash [, origin]}: parses a C2SP tlog-proof,
//	             opens its checkpoint note, checks the proof with
//	             tlog.CheckRecord; outputs origin, size, root, index, extra
//	             (when present) and signers.
//	tile-path    {level, index, width}: the C2SP path of that tile, derived
//	             from tlog.Tile.Path (and checked with tlog.ParseTilePath).
//
// A check whose artifact is wrong (bad signature, proof, tile, base64...)
// gives ok=false and the exit status stays 0. Input the harness should never
// send (not JSON, unknown kind or field, a missing field) exits with status 2.
//
// It builds in GOPATH mode against Debian's sources, downloading nothing
// (tests/gotlog.py does this):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= go build -o tlogcheck main.go
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// tileHeight is the C2SP tlog-tiles height: 2**8 = 256 hashes per full tile.
const tileHeight = 8

// proofHeader is the first line of a C2SP tlog-proof.
const proofHeader = "c2sp.org/tlog-proof@v1"

// check is one request; which fields matter depends on Kind. Sizes and
// indexes are pointers so that a missing one is told apart from zero.
type check struct {
	Kind string `json:"kind"`

	// note, tlog-proof, and tiles with a checkpoint.
	Note string `json:"note"`
	VKey string `json:"vkey"`

	// inclusion (and tiles: size, root).
	Index    *int64   `json:"index"`
	Size     *int64   `json:"size"`
	LeafHash string   `json:"leaf_hash"`
	Proof    []string `json:"proof"`
	Root     string   `json:"root"`

	// consistency.
	Old     *int64 `json:"old"`
	New     *int64 `json:"new"`
	OldRoot string `json:"old_root"`
	NewRoot string `json:"new_root"`

	// tiles.
	Dir             string  `json:"dir"`
	URL             string  `json:"url"`
	Authorization   string  `json:"authorization"`
	Checkpoint      string  `json:"checkpoint"`
	LeafIndexes     []int64 `json:"leaf_indexes"`
	ConsistencyFrom []int64 `json:"consistency_from"`

	// tlog-proof.
	Text   string `json:"text"`
	Origin string `json:"origin"`

	// tile-path.
	Level *int `json:"level"`
	Width *int `json:"width"`
}

// result is one answer: "ok", "error" and the outputs of the check's kind.
type result map[string]any

// inputError marks input the harness should never send: exit status 2.
type inputError struct{ msg string }

func (e *inputError) Error() string { return e.msg }

func badInput(format string, args ...any) error {
	return &inputError{fmt.Sprintf(format, args...)}
}

func main() {
	dec := json.NewDecoder(os.Stdin)
	dec.DisallowUnknownFields()
	var req struct {
		Checks []check `json:"checks"`
	}
	if err := dec.Decode(&req); err != nil {
		fail("malformed input: %v", err)
	}
	if dec.More() {
		fail("malformed input: more than one JSON document")
	}
	if req.Checks == nil {
		fail("malformed input: no \"checks\" list")
	}

	results := make([]result, 0, len(req.Checks))
	for i, c := range req.Checks {
		out := result{}
		err := run(c, out)
		var ie *inputError
		if errors.As(err, &ie) {
			fail("malformed input: check %d (%q): %v", i, c.Kind, err)
		}
		out["ok"] = err == nil
		out["error"] = ""
		if err != nil {
			out["error"] = err.Error()
		}
		results = append(results, out)
	}

	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(map[string]any{"results": results}); err != nil {
		fmt.Fprintf(os.Stderr, "tlogcheck: writing the results: %v\n", err)
		os.Exit(1)
	}
}

// fail reports malformed input and exits with status 2.
func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "tlogcheck: "+format+"\n", args...)
	os.Exit(2)
}

// run performs one check, adding its outputs to out.
func run(c check, out result) error {
	switch c.Kind {
	case "note":
		return checkNote(c, out)
	case "inclusion":
		return checkInclusion(c)
	case "consistency":
		return checkConsistency(c)
	case "tiles":
		return checkTiles(c, out)
	case "tlog-proof":
		return checkTlogProof(c, out)
	case "tile-path":
		return checkTilePath(c, out)
	}
	return badInput("unknown kind")
}

// checkNote opens a signed note with one verifier key.
func checkNote(c check, out result) error {
	if c.Note == "" || c.VKey == "" {
		return badInput("a note check needs note and vkey")
	}
	n, err := openNote(c.Note, c.VKey)
	if err != nil {
		return err
	}
	out["text"] = n.Text
	out["signers"] = signerNames(n.Sigs)
	out["unverified"] = signerNames(n.UnverifiedSigs)
	return nil
}

// checkInclusion checks an RFC 6962 inclusion proof with tlog.CheckRecord.
func checkInclusion(c check) error {
	if c.Index == nil || c.Size == nil || c.LeafHash == "" || c.Root == "" || c.Proof == nil {
		return badInput("an inclusion check needs index, size, leaf_hash, proof and root")
	}
	leaf, err := decodeHash("leaf_hash", c.LeafHash)
	if err != nil {
		return err
	}
	root, err := decodeHash("root", c.Root)
	if err != nil {
		return err
	}
	proof, err := decodeHashes("proof", c.Proof)
	if err != nil {
		return err
	}
	return tlog.CheckRecord(proof, *c.Size, root, *c.Index, leaf)
}

// checkConsistency checks an RFC 6962 consistency proof with tlog.CheckTree.
func checkConsistency(c check) error {
	if c.Old == nil || c.New == nil || c.OldRoot == "" || c.NewRoot == "" || c.Proof == nil {
		return badInput("a consistency check needs old, new, old_root, new_root and proof")
	}
	oldRoot, err := decodeHash("old_root", c.OldRoot)
	if err != nil {
		return err
	}
	newRoot, err := decodeHash("new_root", c.NewRoot)
	if err != nil {
		return err
	}
	proof, err := decodeHashes("proof", c.Proof)
	if err != nil {
		return err
	}
	return tlog.CheckTree(proof, *c.New, newRoot, *c.Old, oldRoot)
}

// checkTiles reads a tree's C2SP tiles through tlog.TileHashReader and
// builds proofs from them.
//
// TileHashReader is meant to check every tile it reads against the tree's
// root, but x/mod before v0.40.0 (Debian's is v0.7.0) skips some of them:
// its loop that authenticates full tiles against their parents starts at
// len(stx), the number of tree-hash subtrees, instead of at the number of
// distinct tiles holding them, so when several subtrees share a tile the
// first tiles read for the requested hashes are never checked (Go issue
// 80744, CVE-2026-56865). So nothing read here is trusted on that reader's
// word alone: every leaf hash and inclusion proof is checked with
// tlog.CheckRecord, every consistency proof and old root with
// tlog.CheckTree, and the tree hash is compared, against the trusted root.
func checkTiles(c check, out result) error {
	if (c.Dir == "") == (c.URL == "") {
		return badInput("a tiles check needs exactly one of dir and url")
	}
	var tree tlog.Tree
	switch {
	case c.Checkpoint != "" && c.VKey != "" && c.Size == nil && c.Root == "":
		// The tree comes from a signed checkpoint, verified first.
		n, err := openNote(c.Checkpoint, c.VKey)
		if err != nil {
			return err
		}
		cp, err := parseCheckpoint(n.Text)
		if err != nil {
			return err
		}
		tree = tlog.Tree{N: cp.size, Hash: cp.root}
	case c.Checkpoint == "" && c.Size != nil && c.Root != "":
		root, err := decodeHash("root", c.Root)
		if err != nil {
			return err
		}
		tree = tlog.Tree{N: *c.Size, Hash: root}
	default:
		return badInput("a tiles check needs size and root, or checkpoint and vkey")
	}
	if tree.N < 1 {
		// tlog.TileHashReader has no tiles to read for an empty tree.
		return fmt.Errorf("a tree of size %d has no tiles", tree.N)
	}

	tiles := &tileReader{
		dir:    c.Dir,
		base:   strings.TrimRight(c.URL, "/"),
		auth:   c.Authorization,
		client: http.Client{Timeout: 30 * time.Second},
		seen:   map[string]bool{},
	}
	reader := tlog.TileHashReader(tree, tiles)
	// Whatever happens, report which tiles were read.
	defer func() { out["tiles_read"] = tiles.read() }()

	th, err := tlog.TreeHash(tree.N, reader)
	if err != nil {
		return fmt.Errorf("tree hash: %v", err)
	}
	if th != tree.Hash {
		return fmt.Errorf("the tiles give tree hash %s, not the root %s", encodeHash(th), encodeHash(tree.Hash))
	}
	out["tree_hash"] = encodeHash(th)

	leaves := make([]string, 0, len(c.LeafIndexes))
	inclusion := make([][]string, 0, len(c.LeafIndexes))
	for _, x := range c.LeafIndexes {
		if x < 0 || x >= tree.N {
			return fmt.Errorf("leaf index %d is not in a tree of size %d", x, tree.N)
		}
		hashes, err := reader.ReadHashes([]int64{tlog.StoredHashIndex(0, x)})
		if err != nil {
			return fmt.Errorf("leaf hash %d: %v", x, err)
		}
		p, err := tlog.ProveRecord(tree.N, x, reader)
		if err != nil {
			return fmt.Errorf("inclusion proof of %d: %v", x, err)
		}
		if err := tlog.CheckRecord(p, tree.N, tree.Hash, x, hashes[0]); err != nil {
			return fmt.Errorf("leaf hash %d and its inclusion proof, as read from the tiles, do not match the root: %v", x, err)
		}
		leaves = append(leaves, encodeHash(hashes[0]))
		inclusion = append(inclusion, encodeHashes(p))
	}
	out["leaf_hashes"] = leaves
	out["inclusion_proofs"] = inclusion

	oldRoots := make([]string, 0, len(c.ConsistencyFrom))
	consistency := make([][]string, 0, len(c.ConsistencyFrom))
	for _, old := range c.ConsistencyFrom {
		p, err := tlog.ProveTree(tree.N, old, reader)
		if err != nil {
			return fmt.Errorf("consistency proof from %d: %v", old, err)
		}
		oldRoot, err := tlog.TreeHash(old, reader)
		if err != nil {
			return fmt.Errorf("tree hash of size %d: %v", old, err)
		}
		if err := tlog.CheckTree(p, tree.N, tree.Hash, old, oldRoot); err != nil {
			return fmt.Errorf("consistency proof from %d and its root, as read from the tiles, do not match the root: %v", old, err)
		}
		oldRoots = append(oldRoots, encodeHash(oldRoot))
		consistency = append(consistency, encodeHashes(p))
	}
	out["old_roots"] = oldRoots
	out["consistency_proofs"] = consistency
	return nil
}

// checkTlogProof verifies a C2SP tlog-proof for a leaf hash: the checkpoint
// note's signature by vkey, then the inclusion proof against its root.
func checkTlogProof(c check, out result) error {
	if c.Text == "" || c.VKey == "" || c.LeafHash == "" {
		return badInput("a tlog-proof check needs text, vkey and leaf_hash")
	}
	leaf, err := decodeHash("leaf_hash", c.LeafHash)
	if err != nil {
		return err
	}
	p, err := parseTlogProof(c.Text)
	if err != nil {
		return err
	}
	n, err := openNote(p.checkpoint, c.VKey)
	if err != nil {
		return err
	}
	cp, err := parseCheckpoint(n.Text)
	if err != nil {
		return err
	}
	if c.Origin != "" && cp.origin != c.Origin {
		return fmt.Errorf("checkpoint origin %q, want %q", cp.origin, c.Origin)
	}
	out["origin"] = cp.origin
	out["size"] = cp.size
	out["root"] = encodeHash(cp.root)
	out["index"] = p.index
	out["signers"] = signerNames(n.Sigs)
	if p.extra != nil {
		out["extra"] = base64.StdEncoding.EncodeToString(p.extra)
	}
	if err := tlog.CheckRecord(p.proof, cp.size, cp.root, p.index, leaf); err != nil {
		return fmt.Errorf("inclusion proof: %v", err)
	}
	return nil
}

// checkTilePath reports the C2SP path of a tile, so the harness can compare
// it with its own paths; the field "index" is the tile's N.
func checkTilePath(c check, out result) error {
	if c.Level == nil || c.Index == nil || c.Width == nil {
		return badInput("a tile-path check needs level, index and width")
	}
	t := tlog.Tile{H: tileHeight, L: *c.Level, N: *c.Index, W: *c.Width}
	if t.L < 0 || t.L > 63 || t.N < 0 || t.W < 1 || t.W > 1<<tileHeight {
		return fmt.Errorf("no such tile: %+v", t)
	}
	p, err := c2spPath(t)
	if err != nil {
		return err
	}
	out["path"] = p
	return nil
}

// openNote verifies a signed note with the single verifier key vkey
// ("name+hash+base64(0x01||pubkey)"); signatures by other keys are ignored,
// as the signed-note spec requires, but one by vkey must be present.
func openNote(text, vkey string) (*note.Note, error) {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("verifier key: %v", err)
	}
	n, err := note.Open([]byte(text), note.VerifierList(v))
	if err != nil {
		return nil, fmt.Errorf("note: %v", err)
	}
	return n, nil
}

func signerNames(sigs []note.Signature) []string {
	names := make([]string, 0, len(sigs))
	for _, s := range sigs {
		names = append(names, s.Name)
	}
	return names
}

// checkpoint is a parsed C2SP tlog-checkpoint note text.
type checkpoint struct {
	origin string
	size   int64
	root   tlog.Hash
}

// parseCheckpoint parses the C2SP tlog-checkpoint text "origin\nsize\nroot\n"
// followed by optional non-empty extension lines. (tlog.ParseTree wants the
// go.sum database's "go.sum database tree" header line instead.)
func parseCheckpoint(text string) (checkpoint, error) {
	if !strings.HasSuffix(text, "\n") {
		return checkpoint{}, errors.New("checkpoint: text does not end with a newline")
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) < 3 {
		return checkpoint{}, fmt.Errorf("checkpoint: %d lines, want at least 3", len(lines))
	}
	for i, line := range lines {
		if line == "" {
			return checkpoint{}, fmt.Errorf("checkpoint: line %d is empty", i+1)
		}
	}
	size, err := parseDecimal(lines[1])
	if err != nil {
		return checkpoint{}, fmt.Errorf("checkpoint: tree size: %v", err)
	}
	root, err := decodeHash("checkpoint root hash", lines[2])
	if err != nil {
		return checkpoint{}, err
	}
	return checkpoint{origin: lines[0], size: size, root: root}, nil
}

// tlogProof is a parsed C2SP tlog-proof.
type tlogProof struct {
	extra      []byte // nil when there is no extra line
	index      int64
	proof      tlog.RecordProof
	checkpoint string // the signed checkpoint note, verbatim
}

// parseTlogProof parses the C2SP tlog-proof text format:
//
//	c2sp.org/tlog-proof@v1
//	[extra <base64>]
//	index <decimal>
//	<base64 hash>... (zero or more: the RFC 6962 inclusion proof)
//	<empty line>
//	<signed checkpoint note>
func parseTlogProof(text string) (tlogProof, error) {
	var p tlogProof
	end := strings.Index(text, "\n\n")
	if end < 0 {
		return p, errors.New("tlog-proof: no empty line before the checkpoint")
	}
	p.checkpoint = text[end+2:]
	lines := strings.Split(text[:end], "\n")
	if lines[0] != proofHeader {
		return p, fmt.Errorf("tlog-proof: first line %q, want %q", lines[0], proofHeader)
	}
	lines = lines[1:]
	if len(lines) > 0 && strings.HasPrefix(lines[0], "extra ") {
		extra, err := decodeBase64(strings.TrimPrefix(lines[0], "extra "))
		if err != nil {
			return p, fmt.Errorf("tlog-proof: extra: %v", err)
		}
		p.extra = extra
		lines = lines[1:]
	}
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "index ") {
		return p, errors.New("tlog-proof: no index line")
	}
	index, err := parseDecimal(strings.TrimPrefix(lines[0], "index "))
	if err != nil {
		return p, fmt.Errorf("tlog-proof: index: %v", err)
	}
	p.index = index
	p.proof, err = decodeHashes("tlog-proof hash", lines[1:])
	if err != nil {
		return p, err
	}
	return p, nil
}

// parseDecimal parses a non-negative ASCII decimal with no leading zeroes.
func parseDecimal(s string) (int64, error) {
	if s == "" || strings.Trim(s, "0123456789") != "" || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("%q is not a decimal without leading zeroes", s)
	}
	return strconv.ParseInt(s, 10, 64)
}

// decodeBase64 decodes canonical standard base64: Go's decoder skips CR and
// LF and accepts non-zero padding bits, so the encoding must round-trip.
func decodeBase64(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, err
	}
	if base64.StdEncoding.EncodeToString(b) != s {
		return nil, fmt.Errorf("%q is not canonical base64", s)
	}
	return b, nil
}

// decodeHash decodes one base64 SHA-256 hash; what names it in errors.
func decodeHash(what, s string) (tlog.Hash, error) {
	var h tlog.Hash
	b, err := decodeBase64(s)
	if err != nil {
		return h, fmt.Errorf("%s: %v", what, err)
	}
	if len(b) != tlog.HashSize {
		return h, fmt.Errorf("%s: %d bytes, want %d", what, len(b), tlog.HashSize)
	}
	copy(h[:], b)
	return h, nil
}

func decodeHashes(what string, list []string) ([]tlog.Hash, error) {
	hashes := make([]tlog.Hash, len(list))
	for i, s := range list {
		h, err := decodeHash(fmt.Sprintf("%s %d", what, i), s)
		if err != nil {
			return nil, err
		}
		hashes[i] = h
	}
	return hashes, nil
}

func encodeHash(h tlog.Hash) string { return base64.StdEncoding.EncodeToString(h[:]) }

func encodeHashes(hashes []tlog.Hash) []string {
	out := make([]string, len(hashes))
	for i, h := range hashes {
		out[i] = encodeHash(h)
	}
	return out
}

// c2spPath maps a Go tile to its C2SP tlog-tiles path. Go's Tile.Path is
// "tile/<H>/<L>/<N>[.p/<W>]", with the tile height as a path segment; C2SP
// fixes the height at 8 and leaves it out: "tile/<L>/<N>[.p/<W>]". The
// encodings of L, N and W are otherwise the same.
func c2spPath(t tlog.Tile) (string, error) {
	if t.H != tileHeight || t.L < 0 {
		return "", fmt.Errorf("tile %+v has no C2SP path", t)
	}
	goPath := t.Path()
	if parsed, err := tlog.ParseTilePath(goPath); err != nil || parsed != t {
		return "", fmt.Errorf("tile %+v: Go path %q does not round-trip", t, goPath)
	}
	prefix := fmt.Sprintf("tile/%d/", tileHeight)
	if !strings.HasPrefix(goPath, prefix) {
		return "", fmt.Errorf("tile %+v: unexpected Go path %q", t, goPath)
	}
	return "tile/" + strings.TrimPrefix(goPath, prefix), nil
}

// maxTileBytes is a full tile's size; reads stop one byte later, so that
// tlog's length check still sees an oversized tile.
const maxTileBytes = (1 << tileHeight) * tlog.HashSize

// tileReader is a tlog.TileReader over C2SP tiles, from a folder or over
// HTTP. It returns tiles as read: tlog.TileHashReader authenticates them.
type tileReader struct {
	dir, base, auth string
	client          http.Client
	seen            map[string]bool
}

func (r *tileReader) Height() int { return tileHeight }

func (r *tileReader) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	data := make([][]byte, len(tiles))
	for i, t := range tiles {
		p, err := c2spPath(t)
		if err != nil {
			return nil, err
		}
		r.seen[p] = true
		if data[i], err = r.fetch(p); err != nil {
			return nil, err
		}
	}
	return data, nil
}

// SaveTiles is called for tiles found valid; nothing is cached here.
func (r *tileReader) SaveTiles([]tlog.Tile, [][]byte) {}

// fetch reads one tile by its C2SP path.
func (r *tileReader) fetch(path string) ([]byte, error) {
	var body io.Reader
	if r.dir != "" {
		f, err := os.Open(filepath.Join(r.dir, filepath.FromSlash(path)))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		body = f
	} else {
		url := r.base + "/" + path
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		if r.auth != "" {
			req.Header.Set("Authorization", r.auth)
		}
		resp, err := r.client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		body = resp.Body
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(body, maxTileBytes+1)); err != nil {
		return nil, fmt.Errorf("reading %s: %v", path, err)
	}
	return buf.Bytes(), nil
}

// read lists the C2SP paths of the tiles read so far, sorted.
func (r *tileReader) read() []string {
	paths := make([]string, 0, len(r.seen))
	for p := range r.seen {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	return paths
}
