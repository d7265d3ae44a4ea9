package kubesource

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
	"github.com/meshd/meshd/modules/galley/validate"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// WebhookPath is where the admission webhook is served.
const WebhookPath = "/validate"

// maxReviewBody bounds an AdmissionReview; the API server caps objects at
// 3 MiB of JSON.
const maxReviewBody = 4 << 20

// maxDeniedFindings bounds the errors listed in a denial.
const maxDeniedFindings = 10

// Webhook validates Istio objects for the API server's
// ValidatingAdmissionWebhook with the same decoder and per-object rules as
// files and the source (whole-set analysis, which depends on other objects
// and on ordering, runs in galley and shows in status). It fails closed:
// anything it cannot read or judge is denied, and the shipped
// ValidatingWebhookConfiguration sets failurePolicy: Fail, so an
// unreachable webhook denies too.
type Webhook struct {
	dec *decode.Decoder
	log *slog.Logger
}

// NewWebhook returns the admission handler.
func NewWebhook(log *slog.Logger) *Webhook {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Webhook{dec: decode.New(decode.Options{}), log: log}
}

// ServeHTTP implements http.Handler for POST /validate.
func (h *Webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxReviewBody+1))
	if err != nil || len(body) > maxReviewBody {
		http.Error(w, "cannot read the AdmissionReview (too large?)", http.StatusBadRequest)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		http.Error(w, "body is not an AdmissionReview with a request", http.StatusBadRequest)
		return
	}
	resp := h.Review(review.Request)
	out := admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp}
	if out.APIVersion == "" {
		out.APIVersion, out.Kind = "admission.k8s.io/v1", "AdmissionReview"
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// Review judges one admission request.
func (h *Webhook) Review(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	resp := &admissionv1.AdmissionResponse{UID: req.UID}
	deny := func(code int32, msg string) *admissionv1.AdmissionResponse {
		resp.Allowed = false
		resp.Result = &metav1.Status{Status: metav1.StatusFailure, Code: code, Reason: metav1.StatusReasonInvalid, Message: msg}
		return resp
	}
	switch req.Operation {
	case admissionv1.Create, admissionv1.Update:
	default:
		resp.Allowed = true // deletes and connects carry nothing to validate
		return resp
	}
	var u unstructured.Unstructured
	if err := json.Unmarshal(req.Object.Raw, &u.Object); err != nil || u.Object == nil {
		return deny(http.StatusBadRequest, "meshd: the request carries no readable object")
	}
	if u.GetNamespace() == "" {
		u.SetNamespace(req.Namespace)
	}
	if u.GetName() == "" {
		u.SetName(req.Name)
	}
	doc, err := Document(&u)
	if err != nil {
		return deny(http.StatusBadRequest, "meshd: cannot render the object: "+err.Error())
	}
	origin := "admission://" + u.GetKind() + "/" + u.GetNamespace() + "/" + u.GetName()
	res := h.dec.Decode(origin, doc)
	findings := append(res.Findings, validate.Objects(res.Objects)...)
	findings = api.SortFindings(findings)
	var errs, warns []string
	for _, f := range findings {
		text := string(f.Code) + " " + f.Message
		if f.Field != "" {
			text = string(f.Code) + " " + f.Field + ": " + f.Message
		}
		switch f.Severity {
		case api.SeverityError:
			errs = append(errs, text)
		case api.SeverityWarning:
			warns = append(warns, text)
		}
	}
	if len(res.Objects) == 0 && len(errs) == 0 {
		errs = append(errs, "not an object galley reads")
	}
	if len(errs) > 0 {
		h.log.Info("admission denied", "object", origin, "user", req.UserInfo.Username, "errors", len(errs))
		if len(errs) > maxDeniedFindings {
			errs = append(errs[:maxDeniedFindings], fmt.Sprintf("... and %d more", len(errs)-maxDeniedFindings))
		}
		resp := deny(http.StatusUnprocessableEntity, fmt.Sprintf("meshd: %s %s/%s is invalid: %s", u.GetKind(), u.GetNamespace(), u.GetName(), strings.Join(errs, "; ")))
		resp.Warnings = warns
		return resp
	}
	resp.Allowed = true
	resp.Warnings = warns
	return resp
}

// certLoader serves a certificate from files and reloads it when they
// change (cert-manager rotates them in place), checking at most every few
// seconds.
type certLoader struct {
	certFile, keyFile string

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   string
	checked time.Time
}

func (l *certLoader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cert != nil && time.Since(l.checked) < 5*time.Second {
		return l.cert, nil
	}
	l.checked = time.Now()
	stamp := fileStamp(l.certFile) + "|" + fileStamp(l.keyFile)
	if l.cert != nil && stamp == l.stamp {
		return l.cert, nil
	}
	c, err := tls.LoadX509KeyPair(l.certFile, l.keyFile)
	if err != nil {
		if l.cert != nil {
			return l.cert, nil // keep serving the last good pair mid-rotation
		}
		return nil, err
	}
	l.cert, l.stamp = &c, stamp
	return l.cert, nil
}

func fileStamp(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return "missing"
	}
	return fmt.Sprint(st.Size(), st.ModTime().UnixNano())
}

// tlsConfig returns the webhook server's TLS config, failing now when the
// files cannot be loaded.
func (l *certLoader) tlsConfig() (*tls.Config, error) {
	if _, err := l.get(nil); err != nil {
		return nil, errors.New("webhook certificate: " + err.Error())
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: l.get}, nil
}
