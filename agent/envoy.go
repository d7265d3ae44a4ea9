package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// envoySupervisor runs Envoy and keeps it running: an Envoy that exits is
// restarted after a backoff that doubles with each exit (and starts over
// once an Envoy has run for maxRestartBackoff). On stop it drains Envoy's
// listeners through the admin API, waits drainDuration, then sends SIGTERM,
// and SIGKILL after stopTimeout.
type envoySupervisor struct {
	cfg  EnvoyConfig
	bin  string
	args []string
	out  io.Writer
	log  *slog.Logger
}

// newEnvoySupervisor resolves the binary (on PATH when it has no slash).
func newEnvoySupervisor(cfg EnvoyConfig, bootstrap string, out io.Writer, log *slog.Logger) (*envoySupervisor, error) {
	bin, err := exec.LookPath(cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("envoy.enabled is true but %w; install Envoy or set envoy.binary", err)
	}
	args := []string{"-c", bootstrap, "--disable-hot-restart",
		"--drain-time-s", strconv.Itoa(max(1, int(cfg.DrainDuration/time.Second)))}
	if cfg.Concurrency > 0 {
		args = append(args, "--concurrency", strconv.Itoa(cfg.Concurrency))
	}
	args = append(args, cfg.Args...)
	return &envoySupervisor{cfg: cfg, bin: bin, args: args, out: out, log: log}, nil
}

// run supervises Envoy until ctx ends, then stops it gracefully.
func (s *envoySupervisor) run(ctx context.Context) {
	wait := s.cfg.RestartBackoff
	for {
		cmd := exec.Command(s.bin, s.args...)
		cmd.Stdout, cmd.Stderr = s.out, s.out
		cmd.SysProcAttr = childAttr()
		started := time.Now()
		if err := cmd.Start(); err != nil {
			s.log.Error("cannot start Envoy", "binary", s.bin, "error", err, "retryIn", wait)
		} else {
			s.log.Info("envoy started", "pid", cmd.Process.Pid, "binary", s.bin, "args", s.args)
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			select {
			case <-ctx.Done():
				s.stop(cmd, exited)
				return
			case err := <-exited:
				ran := time.Since(started)
				if ran >= s.cfg.MaxRestartBackoff {
					wait = s.cfg.RestartBackoff
				}
				s.log.Error("envoy exited; restarting", "pid", cmd.Process.Pid, "error", exitReason(err), "ran", ran.Round(time.Millisecond), "restartIn", wait)
			}
		}
		if !sleep(ctx, wait, nil) {
			return
		}
		wait = min(2*wait, s.cfg.MaxRestartBackoff)
	}
}

func exitReason(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// stop drains, terminates and, if need be, kills Envoy.
func (s *envoySupervisor) stop(cmd *exec.Cmd, exited <-chan error) {
	pid := cmd.Process.Pid
	if s.cfg.DrainDuration > 0 {
		client := &http.Client{Timeout: time.Second}
		resp, err := client.Post("http://"+s.cfg.AdminAddress+"/drain_listeners?graceful", "text/plain", nil)
		if err == nil {
			resp.Body.Close()
			s.log.Info("draining Envoy's listeners", "pid", pid, "for", s.cfg.DrainDuration)
			select {
			case err := <-exited:
				s.log.Info("envoy exited while draining", "pid", pid, "status", exitReason(err))
				return
			case <-time.After(s.cfg.DrainDuration):
			}
		} else {
			s.log.Warn("cannot drain Envoy through its admin API; stopping it at once", "admin", s.cfg.AdminAddress, "error", err)
		}
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		s.log.Info("envoy stopped", "pid", pid, "status", exitReason(err))
	case <-time.After(s.cfg.StopTimeout):
		s.log.Warn("envoy did not exit after SIGTERM; killing it", "pid", pid, "after", s.cfg.StopTimeout)
		_ = cmd.Process.Kill()
		<-exited
	}
}
