package broker

import "github.com/walrus-edge/walrus/cluster"

// SetAfterPropose sets cfg's test hook afterPropose: f runs on the Raft
// leader after each command it proposes has applied, before the proposer
// is answered.
func SetAfterPropose(cfg *Config, f func(cluster.Command, cluster.Result)) { cfg.afterPropose = f }
