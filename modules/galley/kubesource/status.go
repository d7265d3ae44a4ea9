package kubesource

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/meshd/meshd/modules/galley/api"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
)

// Verdict is galley's decision about an origin's latest content.
type Verdict struct {
	// Accepted is true when the latest content is what serves.
	Accepted bool
	// Findings are the findings of the latest content: warnings when
	// accepted, every finding when rejected.
	Findings []api.Finding
}

// Verdicts returns galley's verdict per origin (the module adapts galley's
// /debug/configz document).
type Verdicts func() map[string]Verdict

// StatusWriter writes galley's verdicts into the status of the objects the
// source reads. It writes only when the status would change, so a quiet
// cluster sees no writes, and its own writes (which the informers see)
// come back as no-ops.
type StatusWriter struct {
	src      *Source
	dyn      dynamic.Interface
	verdicts Verdicts
	log      *slog.Logger
	now      func() time.Time
	// Debounce collects changes before writing.
	Debounce time.Duration

	written map[string]writtenStatus // origin -> last status written
}

type writtenStatus struct {
	digest     [32]byte
	accepted   bool
	transition string
}

// NewStatusWriter returns a writer for src's objects.
func NewStatusWriter(src *Source, dyn dynamic.Interface, verdicts Verdicts, log *slog.Logger) *StatusWriter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &StatusWriter{src: src, dyn: dyn, verdicts: verdicts, log: log, now: time.Now, Debounce: 100 * time.Millisecond, written: map[string]writtenStatus{}}
}

// Run writes statuses whenever kick or the source signals, until ctx ends.
func (w *StatusWriter) Run(ctx context.Context, kick <-chan struct{}) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	pending := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
		case <-w.src.changed:
		case <-timer.C:
			pending = false
			w.sync(ctx)
			continue
		}
		if !pending {
			pending = true
			timer.Reset(w.Debounce)
		}
	}
}

// sync writes every status that differs from what was written.
func (w *StatusWriter) sync(ctx context.Context) {
	verdicts := w.verdicts()
	live := map[string]bool{}
	for _, origin := range w.src.origins() {
		live[origin] = true
		v, ok := verdicts[origin]
		if !ok {
			continue // galley has not decided yet
		}
		r, ok := w.src.lookup(origin)
		if !ok {
			continue
		}
		if err := w.write(ctx, origin, r, v); err != nil && ctx.Err() == nil {
			w.log.Warn("cannot write status", "object", origin, "err", err)
		}
	}
	for origin := range w.written {
		if !live[origin] {
			delete(w.written, origin)
		}
	}
}

func (w *StatusWriter) write(ctx context.Context, origin string, r ref, v Verdict) error {
	key := api.Key(strings.TrimPrefix(origin, OriginPrefix))
	status := statusFor(key, r.generation, v)
	body, err := json.Marshal(status)
	if err != nil {
		return err
	}
	digest := sha256.Sum256(body)
	prev, had := w.written[origin]
	if had && prev.digest == digest {
		return nil
	}
	transition := prev.transition
	if !had || prev.accepted != v.Accepted || transition == "" {
		transition = w.now().UTC().Format(time.RFC3339)
	}
	status.Conditions[0].LastTransitionTime = transition
	patch, err := json.Marshal(map[string]any{"status": status})
	if err != nil {
		return err
	}
	_, err = w.dyn.Resource(r.gvr).Namespace(r.namespace).Patch(ctx, r.name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "meshd"}, "status")
	if err != nil {
		return err
	}
	w.written[origin] = writtenStatus{digest: digest, accepted: v.Accepted, transition: transition}
	return nil
}

// Status is what the writer puts in an object's status, in Istio's
// IstioStatus shape.
type Status struct {
	ObservedGeneration int64               `json:"observedGeneration"`
	Conditions         []Condition         `json:"conditions"`
	ValidationMessages []ValidationMessage `json:"validationMessages"`
}

// Condition is a status condition.
type Condition struct {
	Type               string `json:"type"`
	Status             string `json:"status"`
	Reason             string `json:"reason"`
	Message            string `json:"message"`
	ObservedGeneration int64  `json:"observedGeneration"`
	LastTransitionTime string `json:"lastTransitionTime,omitempty"`
}

// ValidationMessage is one finding, as Istio's AnalysisMessageBase plus the
// message text.
type ValidationMessage struct {
	Type             MessageType `json:"type"`
	Level            string      `json:"level"`
	DocumentationURL string      `json:"documentationUrl,omitempty"`
	Description      string      `json:"description"`
}

// MessageType names a finding's code.
type MessageType struct {
	Name string `json:"name,omitempty"`
	Code string `json:"code"`
}

// statusFor builds the status of the object key from a verdict.
// LastTransitionTime is left for the writer.
func statusFor(key api.Key, generation int64, v Verdict) Status {
	st := Status{ObservedGeneration: generation, ValidationMessages: []ValidationMessage{}}
	var errs int
	for _, f := range v.Findings {
		if f.Object != "" && f.Object != key {
			continue
		}
		if f.Severity == api.SeverityError {
			errs++
		}
		st.ValidationMessages = append(st.ValidationMessages, messageFor(f))
	}
	c := Condition{Type: "Accepted", ObservedGeneration: generation}
	if v.Accepted {
		c.Status, c.Reason, c.Message = "True", "Accepted", "galley accepted this object; it is serving"
	} else {
		c.Status, c.Reason = "False", "Rejected"
		c.Message = fmt.Sprintf("galley rejected this version (%d errors, see validationMessages); the last accepted version, if any, keeps serving", errs)
	}
	st.Conditions = []Condition{c}
	return st
}

func messageFor(f api.Finding) ValidationMessage {
	m := ValidationMessage{Type: MessageType{Code: string(f.Code)}, Level: f.Severity.String(), Description: f.Message}
	if f.Field != "" {
		m.Description = f.Field + ": " + f.Message
	}
	if info, ok := api.LookupCode(f.Code); ok {
		m.Type.Name = info.Title
		if info.Istio != "" {
			m.DocumentationURL = "https://istio.io/latest/docs/reference/config/analysis/" + strings.ToLower(info.Istio) + "/"
		}
	}
	return m
}
