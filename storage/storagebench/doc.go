// Package storagebench measures the storage engine against the machine it
// runs on: the machine's own ceilings (sequential buffered write bandwidth,
// single-thread fdatasync rate), the original Walrus's headline workload
// shape, small entries, and the group-commit curve, for every I/O backend.
// Figures are printed with their ratio to the ceilings. It backs
// `walrus bench storage` and `make bench`; results are recorded in
// docs/benchmarks.md.
package storagebench
