package kubesource

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/meshd/meshd/modules/galley/api"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

const validVS = `{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"reviews","namespace":"shop","uid":"u","resourceVersion":"7","managedFields":[{"manager":"kubectl"}]},
"spec":{"hosts":["reviews"],"http":[{"route":[{"destination":{"host":"reviews","subset":"v1"},"weight":100}]}]}}`

const invalidVS = `{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"reviews"},
"spec":{"hosts":["reviews"],"http":[{"timeout":"-1s","route":[{"destination":{"host":"reviews","port":{"number":70000}}}]}]}}`

const unknownFieldVS = `{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"reviews"},
"spec":{"hosts":["reviews"],"htttp":[]}}`

func review(t *testing.T, h http.Handler, op admissionv1.Operation, obj string) *admissionv1.AdmissionResponse {
	t.Helper()
	rev := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "1234", Operation: op, Namespace: "shop", Name: "reviews",
			Kind:   metav1.GroupVersionKind{Group: "networking.istio.io", Version: "v1", Kind: "VirtualService"},
			Object: runtime.RawExtension{Raw: []byte(obj)},
		},
	}
	body, _ := json.Marshal(rev)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, WebhookPath, bytes.NewReader(body)))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	if out.Response == nil || out.Response.UID != "1234" || out.APIVersion != "admission.k8s.io/v1" {
		t.Fatalf("bad review response: %s", rec.Body)
	}
	return out.Response
}

func TestWebhook(t *testing.T) {
	h := NewWebhook(nil)
	if r := review(t, h, admissionv1.Create, validVS); !r.Allowed {
		t.Fatalf("valid VirtualService denied: %+v", r.Result)
	}
	r := review(t, h, admissionv1.Update, invalidVS)
	if r.Allowed {
		t.Fatal("invalid VirtualService allowed")
	}
	for _, want := range []string{"spec.http[0].timeout", "70000"} {
		if !strings.Contains(r.Result.Message, want) {
			t.Errorf("denial %q does not mention %q", r.Result.Message, want)
		}
	}
	if r := review(t, h, admissionv1.Create, unknownFieldVS); r.Allowed || !strings.Contains(r.Result.Message, "htttp") {
		t.Errorf("unknown field: %+v", r)
	}
	if r := review(t, h, admissionv1.Delete, `{}`); !r.Allowed {
		t.Errorf("delete denied")
	}
	// Fails closed: what it cannot read is denied.
	if r := review(t, h, admissionv1.Create, `[1,2]`); r.Allowed {
		t.Errorf("unreadable object allowed")
	}
	if r := review(t, h, admissionv1.Create, `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}`); r.Allowed {
		t.Errorf("non-Istio object allowed")
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, WebhookPath, strings.NewReader("not json")))
	if rec.Code != http.StatusBadRequest {
		t.Errorf("garbage body: %d", rec.Code)
	}
}

func TestStatusFor(t *testing.T) {
	key := api.Key("VirtualService/shop/reviews")
	st := statusFor(key, 4, Verdict{Accepted: false, Findings: []api.Finding{
		{Code: api.CodePort, Severity: api.SeverityError, Object: key, Field: "spec.http[0].route[0].destination.port.number", Message: "port 70000 out of range"},
		{Code: api.CodeWeightSum, Severity: api.SeverityWarning, Object: key, Message: "weights sum to 90"},
		{Code: api.CodePort, Severity: api.SeverityError, Object: "VirtualService/shop/other", Message: "someone else's"},
	}})
	if st.ObservedGeneration != 4 || len(st.Conditions) != 1 || st.Conditions[0].Status != "False" || st.Conditions[0].Reason != "Rejected" {
		t.Fatalf("status = %+v", st)
	}
	if len(st.ValidationMessages) != 2 {
		t.Fatalf("messages = %+v, want the object's own two", st.ValidationMessages)
	}
	m := st.ValidationMessages[0]
	if m.Level != "ERROR" || m.Type.Code != string(api.CodePort) || m.DocumentationURL != "https://istio.io/latest/docs/reference/config/analysis/ist0106/" ||
		!strings.HasPrefix(m.Description, "spec.http[0].route[0].destination.port.number: ") {
		t.Errorf("message = %+v", m)
	}
	ok := statusFor(key, 5, Verdict{Accepted: true})
	if ok.Conditions[0].Status != "True" || len(ok.ValidationMessages) != 0 {
		t.Errorf("accepted status = %+v", ok)
	}
}
