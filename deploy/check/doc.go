// Package check tests the deployment files in deploy/: the Prometheus
// alert rules and the Grafana dashboard (every expression parses, and
// every metric it names is on a running daemon's /metrics), the compose
// file, the Kubernetes example, the Dockerfile and the systemd unit.
//
// It is a module of its own so that the Prometheus server's parsers
// (github.com/prometheus/prometheus, a large module) stay out of the
// product's go.mod: `make deploy-check` (part of `make test`) runs it.
package check
