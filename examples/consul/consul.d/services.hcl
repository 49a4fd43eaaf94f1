# Services registered with the dev agent: Prometheus and sdbridge themselves, both on
# loopback, each with an HTTP health check (Consul's service definition format).
services {
  id      = "prometheus-1"
  name    = "prometheus"
  address = "127.0.0.1"
  port    = 9090
  tags    = ["prometheus", "monitoring"]
  meta    = { version = "2.53" }
  check {
    id       = "prometheus-ready"
    http     = "http://127.0.0.1:9090/-/ready"
    interval = "10s"
  }
}

services {
  id      = "sdbridge-1"
  name    = "sdbridge"
  address = "127.0.0.1"
  port    = 9099
  tags    = ["prometheus", "discovery"]
  check {
    id       = "sdbridge-healthy"
    http     = "http://127.0.0.1:9099/-/healthy"
    interval = "10s"
  }
}

services {
  id   = "untagged-1"
  name = "untagged"
  port = 9999
  tags = ["not-scraped"]
}
