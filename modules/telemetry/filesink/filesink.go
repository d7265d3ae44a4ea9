// Package filesink is telemetry's built-in sink: it writes access-log
// records as JSON lines to a file and rotates the file by size.
//
// When writing a line would take the file past MaxBytes, the file is
// renamed to <path>.1, an existing <path>.1 to <path>.2 and so on up to
// <path>.<MaxBackups>; the oldest is deleted. So at most MaxBackups+1
// files, each of about MaxBytes, are ever kept. A single line longer than
// MaxBytes is written to a fresh file of its own.
package filesink

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/meshd/meshd/modules/telemetry/api"
)

// Options configure a Sink.
type Options struct {
	// Path is the file written; its directory is created (0700) if needed
	// and the file has mode 0600, as access logs carry request paths.
	Path string
	// MaxBytes is the size at which the file is rotated.
	MaxBytes int64
	// MaxBackups is how many rotated files are kept.
	MaxBackups int
}

// Sink writes records to a file. It implements api.Sink and is safe for
// concurrent use.
type Sink struct {
	opts Options

	mu     sync.Mutex
	closed bool
	f      *os.File // nil after a failed rotation; the next Export retries
	w      *bufio.Writer
	size   int64
	buf    bytes.Buffer
	enc    *json.Encoder
}

var _ api.Sink = (*Sink)(nil)

// New opens (appending to) or creates the file.
func New(opts Options) (*Sink, error) {
	if opts.Path == "" || opts.MaxBytes <= 0 || opts.MaxBackups < 0 {
		return nil, fmt.Errorf("filesink: need a path, MaxBytes > 0 and MaxBackups >= 0")
	}
	if err := os.MkdirAll(filepath.Dir(opts.Path), 0o700); err != nil {
		return nil, fmt.Errorf("filesink: %w", err)
	}
	s := &Sink{opts: opts}
	s.enc = json.NewEncoder(&s.buf)
	s.enc.SetEscapeHTML(false)
	if err := s.open(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Sink) open() error {
	f, err := os.OpenFile(s.opts.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("filesink: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("filesink: %w", err)
	}
	s.f, s.size = f, st.Size()
	if s.w == nil {
		s.w = bufio.NewWriterSize(f, 64<<10)
	} else {
		s.w.Reset(f)
	}
	return nil
}

// Export writes records, one JSON object per line, and flushes them to
// the file before it returns.
func (s *Sink) Export(_ context.Context, records []api.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("filesink: closed")
	}
	if s.f == nil {
		if err := s.open(); err != nil {
			return err
		}
	}
	for i := range records {
		s.buf.Reset()
		if err := s.enc.Encode(&records[i]); err != nil {
			return fmt.Errorf("filesink: %w", err)
		}
		if s.size > 0 && s.size+int64(s.buf.Len()) > s.opts.MaxBytes {
			if err := s.rotate(); err != nil {
				return err
			}
		}
		n, err := s.w.Write(s.buf.Bytes())
		s.size += int64(n)
		if err != nil {
			return fmt.Errorf("filesink: %w", err)
		}
	}
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("filesink: %w", err)
	}
	return nil
}

// rotate shifts the files up by one and starts a new one. Under s.mu.
func (s *Sink) rotate() error {
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("filesink: %w", err)
	}
	if err := s.f.Close(); err != nil {
		return fmt.Errorf("filesink: %w", err)
	}
	s.f = nil
	name := func(i int) string { return s.opts.Path + "." + strconv.Itoa(i) }
	if s.opts.MaxBackups == 0 {
		if err := os.Remove(s.opts.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("filesink: rotate: %w", err)
		}
	} else {
		if err := os.Remove(name(s.opts.MaxBackups)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("filesink: rotate: %w", err)
		}
		for i := s.opts.MaxBackups - 1; i >= 1; i-- {
			if err := os.Rename(name(i), name(i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("filesink: rotate: %w", err)
			}
		}
		if err := os.Rename(s.opts.Path, name(1)); err != nil {
			return fmt.Errorf("filesink: rotate: %w", err)
		}
	}
	return s.open()
}

// Close flushes and closes the file.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.f == nil {
		return nil
	}
	err := s.w.Flush()
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	s.f = nil
	return err
}
