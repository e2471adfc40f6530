package broker

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// identity is node.json: who this data directory belongs to.
type identity struct {
	NodeID  uint64    `json:"node_id"`
	UUID    string    `json:"uuid"`
	Created time.Time `json:"created"`
}

// loadIdentity reads dir/node.json, creating it (durably) for a new
// directory. A directory created for another node id is refused: starting
// node 2 on node 1's data would be a silent disaster.
func loadIdentity(dir string, nodeID uint64) (identity, error) {
	path := filepath.Join(dir, "node.json")
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		var id identity
		if err := json.Unmarshal(b, &id); err != nil || id.UUID == "" {
			return identity{}, fmt.Errorf("broker: %s is damaged: %v", path, err)
		}
		if id.NodeID != nodeID {
			return identity{}, fmt.Errorf("broker: %s belongs to node %d, not node %d", dir, id.NodeID, nodeID)
		}
		return id, nil
	case !errors.Is(err, os.ErrNotExist):
		return identity{}, fmt.Errorf("broker: read %s: %w", path, err)
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return identity{}, fmt.Errorf("broker: data directory uuid: %w", err)
	}
	id := identity{NodeID: nodeID, UUID: hex.EncodeToString(raw[:]), Created: time.Now().UTC()}
	if err := writeJSONDurable(path, id); err != nil {
		return identity{}, err
	}
	return id, nil
}

// peersFile is peers.json: the NATS route URLs of the other members, used as
// route seeds when the node restarts (before Raft has caught up).
type peersFile struct {
	Routes []string `json:"routes"`
}

func loadPeers(dir string) []string {
	b, err := os.ReadFile(filepath.Join(dir, "peers.json"))
	if err != nil {
		return nil
	}
	var p peersFile
	if json.Unmarshal(b, &p) != nil {
		return nil
	}
	return p.Routes
}

func savePeers(dir string, routes []string) error {
	return writeJSONDurable(filepath.Join(dir, "peers.json"), peersFile{Routes: routes})
}

// writeJSONDurable replaces path with v's JSON through a synced temporary
// file and a rename, then syncs the directory.
func writeJSONDurable(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("broker: write %s: %w", path, err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp) // the write error is the one to report
		return fmt.Errorf("broker: write %s: %w", path, err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("broker: sync %s: %w", filepath.Dir(path), err)
	}
	defer func() { _ = d.Close() }()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("broker: sync %s: %w", filepath.Dir(path), err)
	}
	return nil
}
