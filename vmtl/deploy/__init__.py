"""Deployment files for running vmtl beyond one machine: Kubernetes manifests and a Grafana dashboard.

The Prometheus scrape configs and rules they pair with live in ``deploy/prometheus/`` (plain files checked
by promtool); docs/operating.md explains how the pieces fit.
"""
