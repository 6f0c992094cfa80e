package identity

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/fsnotify/fsnotify"
)

// LoadDirInto reads the CA directory and makes it ca's issuer.
func LoadDirInto(ca *CA, dir string) error {
	m, err := LoadDir(dir)
	if err != nil {
		return err
	}
	if err := ca.Load(m); err != nil {
		return fmt.Errorf("CA directory %s: %w", dir, err)
	}
	return nil
}

// WatchDir keeps ca's issuer in step with the CA directory until ctx ends: it reloads on every change
// of the directory (fsnotify; this also sees the symlink swap of a mounted Secret) and, as a fallback,
// every resync interval. Material that fails its checks is logged and ignored; the current issuer stays.
// The first load is the caller's (LoadDirInto), so a broken directory fails at start. A nil log is
// slog.Default().
func WatchDir(ctx context.Context, ca *CA, dir string, resync time.Duration, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching %s: %w", dir, err)
	}
	defer w.Close()
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watching %s: %w", dir, err)
	}
	if resync <= 0 {
		resync = time.Minute
	}
	tick := time.NewTicker(resync)
	defer tick.Stop()
	// Editors and kubelet write several files in a row: wait for a quiet 100 ms before reloading.
	const settle = 100 * time.Millisecond
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	reload := func() {
		m, err := LoadDir(dir)
		if err != nil {
			log.Warn("CA directory unreadable; keeping the current issuer", "dir", dir, "err", err)
			return
		}
		if cur := ca.Issuer(); cur != nil && bytes.Equal(m.Bundle, cur.material.Bundle) && bytes.Equal(m.IssuerCert, cur.material.IssuerCert) && bytes.Equal(m.IssuerKey, cur.material.IssuerKey) {
			return
		}
		if err := ca.Load(m); err != nil {
			log.Warn("new CA material rejected; keeping the current issuer", "dir", dir, "err", err)
			return
		}
		iss := ca.Issuer()
		log.Info("issuer loaded", "dir", dir, "issuer", iss.Certificate().Subject.CommonName, "not_after", iss.Certificate().NotAfter, "anchors", len(iss.Anchors))
	}
	// Changes made before the watch began are seen here.
	reload()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-w.Events:
			if !ok {
				return nil
			}
			debounce.Reset(settle)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			log.Warn("watching the CA directory", "dir", dir, "err", err)
		case <-debounce.C:
			reload()
		case <-tick.C:
			reload()
		}
	}
}
