// Package kubesource is galley's Kubernetes config source: Istio's config
// kinds read from their CRDs with informers, decoded and validated by the
// same code as files, with galley's verdict written back to each object's
// status, plus a validating admission webhook that refuses invalid objects
// before they are stored.
//
// Each object is one galley origin, named
// kubernetes://<Kind>/<namespace>/<name>, so a bad object is rejected on its
// own and its last accepted version keeps serving while every other object's
// changes go through. The source reports an object again only when what
// galley reads changes (spec, labels, annotations): status writes, including
// its own, and informer resyncs report nothing.
//
// Status follows Istio's shape: status.validationMessages lists galley's
// findings for the object (type.code, level, documentationUrl, plus the
// message text as description), status.conditions has an Accepted condition,
// and status.observedGeneration the generation the verdict is about.
package kubesource

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/internal/kube"
	"github.com/meshd/meshd/modules/galley/api"
	"github.com/meshd/meshd/modules/galley/decode"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/yaml"
)

// OriginPrefix starts the origin of every object this source reports.
const OriginPrefix = "kubernetes://"

// Origin names the galley origin of an object.
func Origin(kind, namespace, name string) string {
	return OriginPrefix + kind + "/" + namespace + "/" + name
}

// Config is the modules.galley-kubernetes section.
type Config struct {
	Kubeconfig string  `mapstructure:"kubeconfig" doc:"kubeconfig file; empty: $KUBECONFIG, ~/.kube/config, then the in-cluster service account"`
	Context    string  `mapstructure:"context" doc:"kubeconfig context; empty: the current one"`
	QPS        float32 `mapstructure:"qps" doc:"API requests per second (client-go rate limit; 0: client-go default); status writes use it too"`
	Burst      int     `mapstructure:"burst" doc:"API request burst (0: client-go default)"`
	// Namespaces limits the source; empty means every namespace.
	Namespaces []string `mapstructure:"namespaces" doc:"namespaces to read Istio config from; empty: all"`
	// WriteStatus writes galley's verdict into each object's status.
	WriteStatus bool `mapstructure:"writeStatus" doc:"write validation findings and an Accepted condition to each object's status (run one writer per cluster)"`
	// CRDRecheck is how often missing CRDs are looked for again.
	CRDRecheck time.Duration `mapstructure:"crdRecheck" doc:"how often to look again for Istio CRDs that were not installed; when one appears the source restarts to read it"`
	Webhook    WebhookConfig `mapstructure:"webhook"`
}

// WebhookConfig configures the validating admission webhook server.
type WebhookConfig struct {
	Address  string `mapstructure:"address" doc:"HTTPS listen address of the validating admission webhook (POST /validate); empty: no webhook"`
	CertFile string `mapstructure:"certFile" doc:"serving certificate of the webhook (PEM; the ValidatingWebhookConfiguration's caBundle must trust it); reloaded when it changes"`
	KeyFile  string `mapstructure:"keyFile" doc:"key of certFile"`
}

// Default returns the defaults.
func Default() Config {
	return Config{WriteStatus: true, CRDRecheck: time.Minute}
}

// Validate checks what decoding cannot.
func (c *Config) Validate() error {
	var errs []error
	if c.CRDRecheck < time.Second {
		errs = append(errs, errors.New("crdRecheck: must be at least 1s"))
	}
	if c.Webhook.Address != "" && (c.Webhook.CertFile == "" || c.Webhook.KeyFile == "") {
		errs = append(errs, errors.New("webhook: address needs certFile and keyFile"))
	}
	return errors.Join(errs...)
}

// Client returns the connection settings.
func (c *Config) Client() kube.Client {
	return kube.Client{Kubeconfig: c.Kubeconfig, Context: c.Context, QPS: c.QPS, Burst: c.Burst}
}

// ref locates an object in the cluster.
type ref struct {
	gvr        schema.GroupVersionResource
	kind       string
	namespace  string
	name       string
	generation int64
	digest     [32]byte // of what was reported to galley
}

// Source is the Kubernetes config source. It implements api.ConfigSource.
type Source struct {
	cfg  Config
	dyn  dynamic.Interface
	disc discovery.DiscoveryInterface
	log  *slog.Logger
	dec  *decode.Decoder

	mu      sync.Mutex
	objects map[string]*ref // origin -> object
	changed chan struct{}   // 1 slot: objects changed (for the status writer)
}

var _ api.ConfigSource = (*Source)(nil)

// New returns a source. disc finds which CRDs are installed.
func New(cfg Config, dyn dynamic.Interface, disc discovery.DiscoveryInterface, log *slog.Logger) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("galley kubernetes source: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{
		cfg: cfg, dyn: dyn, disc: disc, log: log,
		dec:     decode.New(decode.Options{}),
		objects: map[string]*ref{},
		changed: make(chan struct{}, 1),
	}, nil
}

// installed returns the resources whose CRDs serve watchVersion.
func (s *Source) installed() ([]resource, []string, error) {
	served := map[string]bool{}
	for _, gv := range []string{api.GroupNetworking + "/" + watchVersion, api.GroupSecurity + "/" + watchVersion} {
		list, err := s.disc.ServerResourcesForGroupVersion(gv)
		if err != nil {
			if isNotFound(err) {
				continue
			}
			return nil, nil, fmt.Errorf("discover %s: %w", gv, err)
		}
		group := strings.SplitN(gv, "/", 2)[0]
		for _, r := range list.APIResources {
			served[group+"/"+r.Name] = true
		}
	}
	var have []resource
	var missing []string
	for _, r := range resources {
		if served[r.kind.Group+"/"+r.plural] {
			have = append(have, r)
		} else {
			missing = append(missing, r.plural+"."+r.kind.Group)
		}
	}
	return have, missing, nil
}

func isNotFound(err error) bool {
	var se interface{ Status() metav1.Status }
	if errors.As(err, &se) {
		return se.Status().Code == 404
	}
	return strings.Contains(err.Error(), "not found") || strings.Contains(err.Error(), "could not find the requested resource")
}

// Run reads every installed kind until ctx ends. It reports each object,
// calls Synced once every informer has listed, and then reports changes. It
// returns an error (and galley restarts it) when a CRD that was missing
// gets installed, so the new kind is read too.
func (s *Source) Run(ctx context.Context, sink api.Sink) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A (re)started source reports everything again: galley drops the
	// origins a run does not report before Synced.
	s.mu.Lock()
	s.objects = map[string]*ref{}
	s.mu.Unlock()
	have, missing, err := s.installed()
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		s.log.Warn("Istio CRDs not installed; those kinds are not read from Kubernetes (apply deploy/kubernetes/crds)", "missing", missing)
	}
	namespaces := s.cfg.Namespaces
	if len(namespaces) == 0 {
		namespaces = []string{metav1.NamespaceAll}
	}
	var factories []dynamicinformer.DynamicSharedInformerFactory
	var synced []cache.InformerSynced
	for _, ns := range namespaces {
		f := dynamicinformer.NewFilteredDynamicSharedInformerFactory(s.dyn, 0, ns, nil)
		factories = append(factories, f)
		for _, r := range have {
			inf := f.ForResource(r.gvr()).Informer()
			h, err := inf.AddEventHandler(s.handler(r, sink))
			if err != nil {
				return err
			}
			synced = append(synced, h.HasSynced)
		}
	}
	for _, f := range factories {
		f.Start(ctx.Done())
	}
	defer func() {
		cancel()
		for _, f := range factories {
			f.Shutdown()
		}
	}()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil // ctx ended
	}
	sink.Synced()
	s.log.Info("kubernetes config source synced", "kinds", len(have), "namespaces", namespaces)

	if len(missing) == 0 {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(s.cfg.CRDRecheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			now, _, err := s.installed()
			if err != nil {
				s.log.Debug("CRD recheck failed", "err", err)
				continue
			}
			if len(now) > len(have) {
				return fmt.Errorf("new Istio CRDs installed; restarting to read them")
			}
		}
	}
}

func (s *Source) handler(r resource, sink api.Sink) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.report(r, obj, sink) },
		UpdateFunc: func(_, obj any) { s.report(r, obj, sink) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			u, ok := obj.(*unstructured.Unstructured)
			if !ok {
				return
			}
			origin := Origin(r.kind.Kind, u.GetNamespace(), u.GetName())
			s.mu.Lock()
			delete(s.objects, origin)
			s.mu.Unlock()
			sink.Update(api.Update{Origin: origin, Removed: true})
		},
	}
}

// report decodes obj and reports it unless galley already has this content.
func (s *Source) report(r resource, obj any, sink api.Sink) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	origin := Origin(r.kind.Kind, u.GetNamespace(), u.GetName())
	doc, err := Document(u)
	if err != nil {
		sink.Update(api.Update{Origin: origin, Findings: []api.Finding{{
			Code: api.CodeSyntax, Severity: api.SeverityError, Object: api.MakeKey(r.kind, u.GetNamespace(), u.GetName()),
			File: origin, Message: "cannot render the object: " + err.Error(),
		}}})
		return
	}
	digest := sha256.Sum256(doc)
	s.mu.Lock()
	prev := s.objects[origin]
	s.objects[origin] = &ref{gvr: r.gvr(), kind: r.kind.Kind, namespace: u.GetNamespace(), name: u.GetName(), generation: u.GetGeneration(), digest: digest}
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
	if prev != nil && prev.digest == digest {
		return // status-only change or resync: nothing galley reads
	}
	res := s.dec.Decode(origin, doc)
	sink.Update(api.Update{Origin: origin, Objects: res.Objects, Rejected: res.Rejected, Findings: res.Findings})
}

// lookup returns the object of an origin.
func (s *Source) lookup(origin string) (ref, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.objects[origin]
	if !ok {
		return ref{}, false
	}
	return *r, true
}

// origins lists the known origins, sorted.
func (s *Source) origins() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.objects))
	for o := range s.objects {
		out = append(out, o)
	}
	slices.Sort(out)
	return out
}

// Document renders what galley reads of an object as YAML: apiVersion,
// kind, metadata (name, namespace, labels, annotations other than
// kubectl's) and spec. Status and server-set metadata are left out, so
// their changes are not config changes.
func Document(u *unstructured.Unstructured) ([]byte, error) {
	meta := map[string]any{"name": u.GetName()}
	if ns := u.GetNamespace(); ns != "" {
		meta["namespace"] = ns
	}
	if l := u.GetLabels(); len(l) > 0 {
		meta["labels"] = l
	}
	ann := map[string]string{}
	for k, v := range u.GetAnnotations() {
		if !strings.HasPrefix(k, "kubectl.kubernetes.io/") {
			ann[k] = v
		}
	}
	if len(ann) > 0 {
		meta["annotations"] = ann
	}
	doc := map[string]any{"apiVersion": u.GetAPIVersion(), "kind": u.GetKind(), "metadata": meta}
	if spec, ok := u.Object["spec"]; ok {
		doc["spec"] = spec
	}
	return yaml.Marshal(doc)
}
