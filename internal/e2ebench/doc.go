// Package e2ebench holds end-to-end benchmarks of the aggregator over real
// libp2p on loopback: real sender hosts in a child process (TCP, noise,
// yamux) write heartbeat lines into a real aggregator host, and the
// benchmark reports the aggregator process's CPU time per heartbeat. It has
// no code outside its tests; the figures are in docs/benchmarks.md.
package e2ebench
