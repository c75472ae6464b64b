// stargz-store for regfs's benchmarks, built from Debian's
// golang-github-containerd-stargz-snapshotter-dev (0.12), which ships the
// library but no cmd/. It makes the calls upstream's cmd/stargz-store/main.go
// makes: a TOML config (fs/config.Config plus the resolver's hosts), a docker
// config keychain, resolver.RegistryHostsFromConfig, store.NewLayerManager
// with the in-memory metadata store, store.Mount, then waits for SIGINT or
// SIGTERM and unmounts. Left out: the CRI keychain (it needs k8s.io/cri-api,
// which Debian lacks) and the kubeconfig keychain (no cluster here).
//
// Usage: stargz-store -config FILE -root DIR MOUNTPOINT
// Layout of the mount: MOUNTPOINT/<base64(ref)>/<layer digest>/{diff,info,blob}.
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/containerd/log"
	"github.com/containerd/stargz-snapshotter/fs/config"
	memorymetadata "github.com/containerd/stargz-snapshotter/metadata/memory"
	"github.com/containerd/stargz-snapshotter/service/keychain/dockerconfig"
	"github.com/containerd/stargz-snapshotter/service/resolver"
	"github.com/containerd/stargz-snapshotter/store"
	"github.com/pelletier/go-toml"
	"github.com/sirupsen/logrus"
)

var (
	configPath = flag.String("config", "", "path to the configuration file")
	logLevel   = flag.String("log-level", "info", "logging level")
	rootDir    = flag.String("root", "/var/lib/stargz-store", "root directory (caches)")
)

// Config is upstream's stargz-store config without the CRI and kubeconfig keychains.
type Config struct {
	config.Config
	ResolverConfig resolver.Config `toml:"resolver"`
}

func main() {
	flag.Parse()
	mountPoint := flag.Arg(0)
	lvl, err := logrus.ParseLevel(*logLevel)
	if err != nil {
		logrus.WithError(err).Fatal("bad log level")
	}
	logrus.SetLevel(lvl)
	ctx := log.WithLogger(context.Background(), log.L)
	if mountPoint == "" {
		log.G(ctx).Fatal("mount point must be specified")
	}
	var cfg Config
	if *configPath != "" {
		tree, err := toml.LoadFile(*configPath)
		if err != nil {
			log.G(ctx).WithError(err).Fatalf("failed to load config file %q", *configPath)
		}
		if err := tree.Unmarshal(&cfg); err != nil {
			log.G(ctx).WithError(err).Fatalf("failed to unmarshal config file %q", *configPath)
		}
	}
	credsFuncs := []resolver.Credential{dockerconfig.NewDockerconfigKeychain(ctx)}
	hosts := resolver.RegistryHostsFromConfig(cfg.ResolverConfig, credsFuncs...)
	if err := os.MkdirAll(mountPoint, 0755); err != nil {
		log.G(ctx).WithError(err).Fatalf("failed to prepare mountpoint %q", mountPoint)
	}
	if cfg.Config.DisableVerification {
		log.G(ctx).Fatal("content verification can't be disabled")
	}
	lm, err := store.NewLayerManager(ctx, *rootDir, hosts, memorymetadata.NewReader, cfg.Config)
	if err != nil {
		log.G(ctx).WithError(err).Fatal("failed to prepare pool")
	}
	if err := store.Mount(ctx, mountPoint, lm, cfg.Config.Debug); err != nil {
		log.G(ctx).WithError(err).Fatalf("failed to mount fs at %q", mountPoint)
	}
	defer func() {
		syscall.Unmount(mountPoint, 0)
		log.G(ctx).Info("Exiting")
	}()
	c := make(chan os.Signal, 1)
	signal.Notify(c, os.Interrupt, syscall.SIGTERM)
	s := <-c
	log.G(ctx).Infof("Got %v", s)
}
