// Package config reads the YAML configuration files of the roles and turns
// their TLS sections into mutual-TLS configurations.
package config

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"os"

	"gopkg.in/yaml.v3"

	"standby/internal/agent"
	"standby/internal/mastertarget"
	"standby/internal/pki"
	"standby/internal/processserver"
)

// TLS names the certificate files of a component.
type TLS struct {
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

func (t TLS) files() (pki.Files, error) {
	if t.CA == "" || t.Cert == "" || t.Key == "" {
		return pki.Files{}, fmt.Errorf("tls: ca, cert and key are all required (every link is mutual TLS)")
	}
	return pki.Files{CA: t.CA, Cert: t.Cert, Key: t.Key}, nil
}

// Agent is an agent's configuration file.
type Agent struct {
	agent.Config `yaml:",inline"`
	TLS          TLS `yaml:"tls"`
}

// ProcessServer is a process server's configuration file.
type ProcessServer struct {
	processserver.Config `yaml:",inline"`
	TLS                  TLS `yaml:"tls"`
}

// MasterTarget is a master target's configuration file.
type MasterTarget struct {
	mastertarget.Config `yaml:",inline"`
	TLS                 TLS `yaml:"tls"`
}

// Load reads a YAML file strictly: an unknown key is an error, because a
// misspelt option silently ignored is a DR plan that does not do what its
// owner thinks.
func Load(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading configuration: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("configuration %s: %w", path, err)
	}
	return nil
}

func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return h
}

// AgentTLS is the agent's client configuration toward its process server.
func AgentTLS(t TLS, psAddr string) (*tls.Config, error) {
	f, err := t.files()
	if err != nil {
		return nil, err
	}
	return pki.ClientConfig(f, hostOf(psAddr), pki.RoleProcessServer)
}

// ProcessServerTLS is the server side (for agents) and the client side
// (toward the master target).
func ProcessServerTLS(t TLS, mtAddr string) (server, client *tls.Config, err error) {
	f, err := t.files()
	if err != nil {
		return nil, nil, err
	}
	if server, err = pki.ServerConfig(f, pki.RoleAgent); err != nil {
		return nil, nil, err
	}
	if client, err = pki.ClientConfig(f, hostOf(mtAddr), pki.RoleMasterTarget); err != nil {
		return nil, nil, err
	}
	return server, client, nil
}

// MasterTargetTLS is the server side, for process servers.
func MasterTargetTLS(t TLS) (*tls.Config, error) {
	f, err := t.files()
	if err != nil {
		return nil, err
	}
	return pki.ServerConfig(f, pki.RoleProcessServer)
}
