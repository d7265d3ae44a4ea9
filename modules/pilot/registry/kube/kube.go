// Package kube discovers services from a Kubernetes cluster for pilot's
// registry aggregate, with client-go informers on Services, EndpointSlices,
// Pods and (optionally) Nodes.
//
// Mapping to pilot's model:
//
//   - host name <name>.<namespace>.svc.<clusterDomain>, namespace as is,
//     cluster IPs as addresses, service labels, exportTo from the
//     networking.istio.io/exportTo annotation;
//   - ports from the Service: protocol from appProtocol, else Istio's port
//     name convention (grpc-*, http-*, ...); EndpointSlice ports join
//     service ports by name, as the EndpointSlice controller writes them;
//   - endpoints from EndpointSlices labelled kubernetes.io/service-name:
//     ready → healthy, serving but terminating → draining, otherwise
//     unhealthy; FQDN slices are ignored;
//   - each endpoint's pod (targetRef) gives its labels, service account
//     (with the namespace, the SPIFFE identity) and node; the node's
//     topology.kubernetes.io/{region,zone} and topology.istio.io/subzone
//     labels give the locality, falling back to the slice's zone when the
//     node is unknown (nodes may be absent, or not readable);
//   - ExternalName services resolve their external name by DNS.
//
// The source reports nothing until every informer has synced, then the
// full state; afterwards only when a service it builds actually differs.
// Informer resyncs and status-only pod or node updates (conditions,
// heartbeats) rebuild nothing, so they cause no pushes.
package kube

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/internal/kube"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/registry"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	listersdiscoveryv1 "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

// SourceName is the registry source name (and model.Service.Source).
const SourceName = "kubernetes"

// Labels and annotations the source reads.
const (
	AnnotationExportTo = "networking.istio.io/exportTo"
	LabelRegion        = "topology.kubernetes.io/region"
	LabelZone          = "topology.kubernetes.io/zone"
	LabelSubzone       = "topology.istio.io/subzone"
)

// Config configures the Kubernetes discovery source.
type Config struct {
	Kubeconfig string `mapstructure:"kubeconfig" doc:"kubeconfig file; empty: $KUBECONFIG, ~/.kube/config, then the in-cluster service account"`
	Context    string `mapstructure:"context" doc:"kubeconfig context; empty: the current one"`
	// Namespaces limits discovery; empty means every namespace.
	Namespaces []string `mapstructure:"namespaces" doc:"namespaces to discover services in; empty: all (needs cluster-wide list/watch)"`
	// ExcludeNamespaces are skipped even when Namespaces is empty.
	ExcludeNamespaces []string `mapstructure:"excludeNamespaces" doc:"namespaces never discovered"`
	// NodeLocality reads Nodes for topology labels.
	NodeLocality bool `mapstructure:"nodeLocality" doc:"read Nodes for endpoint locality (topology.kubernetes.io/region and zone); off: the EndpointSlice zone only"`
	// Resync is client-go's informer resync period; 0 disables it.
	Resync time.Duration `mapstructure:"resync" doc:"informer resync period (0: none); resyncs never cause pushes when nothing changed"`
	QPS    float32       `mapstructure:"qps" doc:"API requests per second (client-go rate limit; 0: client-go default)"`
	Burst  int           `mapstructure:"burst" doc:"API request burst (0: client-go default)"`
}

// Default returns the defaults.
func Default() Config {
	return Config{NodeLocality: true}
}

// Validate checks what decoding cannot.
func (c *Config) Validate() error {
	var errs []error
	for _, ns := range c.Namespaces {
		if slices.Contains(c.ExcludeNamespaces, ns) {
			errs = append(errs, fmt.Errorf("namespaces: %q is also in excludeNamespaces", ns))
		}
	}
	if c.Resync < 0 {
		errs = append(errs, errors.New("resync: must not be negative"))
	}
	return errors.Join(errs...)
}

// Client returns the connection settings.
func (c *Config) Client() kube.Client {
	return kube.Client{Kubeconfig: c.Kubeconfig, Context: c.Context, QPS: c.QPS, Burst: c.Burst}
}

// Options carry what the host provides.
type Options struct {
	Log *slog.Logger
	// ClusterDomain is the mesh's cluster domain (mesh.clusterDomain).
	ClusterDomain string
	// SyncTimeout bounds the wait for the informers' first sync before Run
	// fails (and the aggregate restarts it); 0 means 5 minutes.
	SyncTimeout time.Duration
}

// Source is the Kubernetes discovery source. It implements
// registry.Source.
type Source struct {
	cfg    Config
	opts   Options
	client kubernetes.Interface
	log    *slog.Logger
}

var _ registry.Source = (*Source)(nil)

// New returns a source reading through client.
func New(cfg Config, client kubernetes.Interface, opts Options) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.ClusterDomain == "" {
		opts.ClusterDomain = "cluster.local"
	}
	if opts.SyncTimeout == 0 {
		opts.SyncTimeout = 5 * time.Minute
	}
	return &Source{cfg: cfg, opts: opts, client: client, log: opts.Log}, nil
}

// NewFromConfig builds the client from cfg's kubeconfig settings.
func NewFromConfig(cfg Config, opts Options) (*Source, error) {
	rc, err := cfg.Client().RESTConfig("meshd/pilot")
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return New(cfg, client, opts)
}

// nsListers are the listers of one watched namespace scope.
type nsListers struct {
	services listerscorev1.ServiceLister
	slices   listersdiscoveryv1.EndpointSliceLister
	pods     listerscorev1.PodLister
	// sliceIndex finds slices by the pods they point at.
	sliceIndex cache.Indexer
}

// indexPod indexes EndpointSlices by the namespace/name of their pods.
const indexPod = "pod"

func slicePods(obj any) ([]string, error) {
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	var out []string
	for _, ep := range sl.Endpoints {
		if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
			out = append(out, cmp.Or(ep.TargetRef.Namespace, sl.Namespace)+"/"+ep.TargetRef.Name)
		}
	}
	return out, nil
}

// run is the state of one Run.
type run struct {
	s       *Source
	scopes  []nsListers // one per namespace, or one for all
	nodes   listerscorev1.NodeLister
	trigger chan struct{}

	mu    sync.Mutex
	dirty map[string]bool // ns/name of services to rebuild; "*" for all

	built map[string]*model.Service // ns/name -> service
}

// Run starts informers, waits for them to sync, reports the full state and
// then each change until ctx ends.
func (s *Source) Run(ctx context.Context, sink registry.Sink) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := &run{s: s, trigger: make(chan struct{}, 1), dirty: map[string]bool{}, built: map[string]*model.Service{}}
	var factories []informers.SharedInformerFactory
	var synced []cache.InformerSynced
	namespaces := s.cfg.Namespaces
	if len(namespaces) == 0 {
		namespaces = []string{metav1.NamespaceAll}
	}
	for _, ns := range namespaces {
		f := informers.NewSharedInformerFactoryWithOptions(s.client, s.cfg.Resync, informers.WithNamespace(ns))
		factories = append(factories, f)
		svc := f.Core().V1().Services()
		sl := f.Discovery().V1().EndpointSlices()
		pod := f.Core().V1().Pods()
		if err := pod.Informer().SetTransform(trimPod); err != nil {
			return err
		}
		if err := sl.Informer().AddIndexers(cache.Indexers{indexPod: slicePods}); err != nil {
			return err
		}
		for _, reg := range []func() (cache.ResourceEventHandlerRegistration, error){
			func() (cache.ResourceEventHandlerRegistration, error) {
				return svc.Informer().AddEventHandler(r.serviceHandler())
			},
			func() (cache.ResourceEventHandlerRegistration, error) {
				return sl.Informer().AddEventHandler(r.sliceHandler())
			},
			func() (cache.ResourceEventHandlerRegistration, error) {
				return pod.Informer().AddEventHandler(r.podHandler())
			},
		} {
			h, err := reg()
			if err != nil {
				return err
			}
			synced = append(synced, h.HasSynced)
		}
		r.scopes = append(r.scopes, nsListers{services: svc.Lister(), slices: sl.Lister(), pods: pod.Lister(), sliceIndex: sl.Informer().GetIndexer()})
	}
	if s.cfg.NodeLocality {
		f := informers.NewSharedInformerFactoryWithOptions(s.client, s.cfg.Resync)
		factories = append(factories, f)
		nodes := f.Core().V1().Nodes()
		if err := nodes.Informer().SetTransform(trimNode); err != nil {
			return err
		}
		h, err := nodes.Informer().AddEventHandler(r.nodeHandler())
		if err != nil {
			return err
		}
		synced = append(synced, h.HasSynced)
		r.nodes = nodes.Lister()
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

	syncCtx, syncCancel := context.WithTimeout(ctx, s.opts.SyncTimeout)
	ok := cache.WaitForCacheSync(syncCtx.Done(), synced...)
	syncCancel()
	if ctx.Err() != nil {
		return nil
	}
	if !ok {
		return fmt.Errorf("kubernetes informers did not sync within %s (check RBAC: list/watch services, endpointslices, pods and nodes)", s.opts.SyncTimeout)
	}
	s.log.Info("kubernetes informers synced", "namespaces", namespaces)
	r.markAll()
	r.publish(sink, true)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.trigger:
			r.publish(sink, false)
		}
	}
}

func (r *run) mark(key string) {
	r.mu.Lock()
	r.dirty[key] = true
	r.mu.Unlock()
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

func (r *run) markAll() { r.mark("*") }

func (r *run) excluded(ns string) bool { return slices.Contains(r.s.cfg.ExcludeNamespaces, ns) }

// publish rebuilds the dirty services and reports the full state when any
// differs from the last report (or first is set).
func (r *run) publish(sink registry.Sink, first bool) {
	r.mu.Lock()
	dirty := r.dirty
	r.dirty = map[string]bool{}
	r.mu.Unlock()
	if dirty["*"] {
		dirty = map[string]bool{}
		for k := range r.built {
			dirty[k] = true
		}
		for _, sc := range r.scopes {
			svcs, _ := sc.services.List(labels.Everything())
			for _, svc := range svcs {
				dirty[svc.Namespace+"/"+svc.Name] = true
			}
		}
	}
	changed := first
	for key := range dirty {
		ns, name, _ := strings.Cut(key, "/")
		next := r.build(ns, name)
		prev, had := r.built[key]
		switch {
		case next == nil && had:
			delete(r.built, key)
			changed = true
		case next == nil:
		case had && prev.DefinitionHash() == next.DefinitionHash() && prev.EndpointHash() == next.EndpointHash():
			// Same content: keep the old pointer, report nothing.
		default:
			r.built[key] = next
			changed = true
		}
	}
	if !changed {
		return
	}
	out := make([]*model.Service, 0, len(r.built))
	for _, k := range slices.Sorted(maps.Keys(r.built)) {
		out = append(out, r.built[k])
	}
	sink.Update(registry.State{Services: out})
}

// scope returns the listers that cover namespace ns.
func (r *run) scope(ns string) (nsListers, bool) {
	if len(r.s.cfg.Namespaces) == 0 {
		return r.scopes[0], true
	}
	if i := slices.Index(r.s.cfg.Namespaces, ns); i >= 0 {
		return r.scopes[i], true
	}
	return nsListers{}, false
}

// build builds the service ns/name from the caches; nil when it does not
// exist or is not discovered.
func (r *run) build(ns, name string) *model.Service {
	if r.excluded(ns) {
		return nil
	}
	sc, ok := r.scope(ns)
	if !ok {
		return nil
	}
	ks, err := sc.services.Services(ns).Get(name)
	if err != nil {
		return nil
	}
	svc := &model.Service{
		Hostname:   name + "." + ns + ".svc." + r.s.opts.ClusterDomain,
		Namespace:  ns,
		Labels:     ks.Labels,
		Source:     SourceName,
		Resolution: model.ResolutionStatic,
	}
	if v := ks.Annotations[AnnotationExportTo]; v != "" {
		for _, e := range strings.Split(v, ",") {
			if e = strings.TrimSpace(e); e != "" {
				svc.ExportTo = append(svc.ExportTo, e)
			}
		}
	}
	for _, ip := range ks.Spec.ClusterIPs {
		if ip != "" && ip != corev1.ClusterIPNone {
			svc.Addresses = append(svc.Addresses, ip)
		}
	}
	byName := map[string]model.Port{}
	for _, p := range ks.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue // UDP and SCTP are not proxied
		}
		mp := model.Port{Name: p.Name, Number: uint32(p.Port), Protocol: portProtocol(p)}
		if p.TargetPort.IntValue() > 0 {
			mp.TargetPort = uint32(p.TargetPort.IntValue())
		}
		svc.Ports = append(svc.Ports, mp)
		byName[p.Name] = mp
	}
	if ks.Spec.Type == corev1.ServiceTypeExternalName {
		svc.Resolution = model.ResolutionDNS
		svc.MeshExternal = true
		for _, p := range svc.Ports {
			svc.Endpoints = append(svc.Endpoints, &model.Endpoint{
				Address: ks.Spec.ExternalName, Port: cmp.Or(p.TargetPort, p.Number), ServicePort: p.Number,
				Namespace: ns, Workload: ks.Spec.ExternalName,
			})
		}
		return svc.Finalize()
	}
	slicesList, _ := sc.slices.EndpointSlices(ns).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name}))
	seen := map[string]bool{}
	for _, sl := range slicesList {
		if sl.AddressType == discoveryv1.AddressTypeFQDN {
			continue
		}
		for _, ep := range sl.Endpoints {
			health := endpointHealth(ep.Conditions)
			var pod *corev1.Pod
			if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
				pod, _ = sc.pods.Pods(cmp.Or(ep.TargetRef.Namespace, ns)).Get(ep.TargetRef.Name)
			}
			loc := r.locality(ep, pod)
			for _, sp := range sl.Ports {
				if sp.Port == nil {
					continue
				}
				if sp.Protocol != nil && *sp.Protocol != corev1.ProtocolTCP {
					continue
				}
				name := ""
				if sp.Name != nil {
					name = *sp.Name
				}
				mp, ok := byName[name]
				if !ok {
					continue
				}
				for _, addr := range ep.Addresses {
					if net.ParseIP(addr) == nil {
						continue
					}
					key := fmt.Sprint(addr, "|", *sp.Port, "|", mp.Number)
					if seen[key] {
						continue // the same endpoint in two slices during a handover
					}
					seen[key] = true
					e := &model.Endpoint{
						Address: addr, Port: uint32(*sp.Port), ServicePort: mp.Number,
						Locality: loc, Health: health, Namespace: ns, Workload: addr,
					}
					if pod != nil {
						e.Labels = pod.Labels
						e.ServiceAccount = pod.Spec.ServiceAccountName
						e.Workload = pod.Name
					}
					svc.Endpoints = append(svc.Endpoints, e)
				}
			}
		}
	}
	return svc.Finalize()
}

func endpointHealth(c discoveryv1.EndpointConditions) model.Health {
	// A nil ready condition means ready (the API's documented default).
	ready := c.Ready == nil || *c.Ready
	switch {
	case c.Terminating != nil && *c.Terminating:
		if c.Serving != nil && *c.Serving {
			return model.Draining
		}
		return model.Unhealthy
	case ready:
		return model.Healthy
	}
	return model.Unhealthy
}

func (r *run) locality(ep discoveryv1.Endpoint, pod *corev1.Pod) model.Locality {
	var l model.Locality
	nodeName := ""
	if ep.NodeName != nil {
		nodeName = *ep.NodeName
	} else if pod != nil {
		nodeName = pod.Spec.NodeName
	}
	if r.nodes != nil && nodeName != "" {
		if n, err := r.nodes.Get(nodeName); err == nil {
			l = model.Locality{Region: n.Labels[LabelRegion], Zone: n.Labels[LabelZone], Subzone: n.Labels[LabelSubzone]}
		}
	}
	if l.Zone == "" && ep.Zone != nil {
		l.Zone = *ep.Zone
	}
	return l
}

// portProtocol derives a port's protocol: appProtocol first (including the
// kubernetes.io/h2c and kubernetes.io/ws forms), then Istio's port naming.
func portProtocol(p corev1.ServicePort) model.Protocol {
	if p.AppProtocol != nil && *p.AppProtocol != "" {
		ap := *p.AppProtocol
		switch ap {
		case "kubernetes.io/h2c":
			return model.ProtocolHTTP2
		case "kubernetes.io/ws", "kubernetes.io/wss":
			return model.ProtocolHTTP
		}
		return model.ParseProtocol(ap)
	}
	return model.ProtocolFromPortName(p.Name)
}

// Event handlers: each marks the services an object can affect. Updates
// that change nothing the source reads (resyncs, status-only changes) are
// dropped here, so they never cause a rebuild, let alone a push.

func (r *run) serviceHandler() cache.ResourceEventHandler {
	key := func(obj any) {
		if svc, ok := obj.(*corev1.Service); ok {
			r.mark(svc.Namespace + "/" + svc.Name)
		}
	}
	return cache.ResourceEventHandlerDetailedFuncs{
		AddFunc: func(obj any, _ bool) { key(obj) },
		UpdateFunc: func(old, cur any) {
			if sameVersion(old, cur) {
				return
			}
			key(cur)
		},
		DeleteFunc: func(obj any) { key(unwrap(obj)) },
	}
}

func (r *run) sliceHandler() cache.ResourceEventHandler {
	key := func(obj any) {
		if sl, ok := obj.(*discoveryv1.EndpointSlice); ok {
			if name := sl.Labels[discoveryv1.LabelServiceName]; name != "" {
				r.mark(sl.Namespace + "/" + name)
			}
		}
	}
	return cache.ResourceEventHandlerDetailedFuncs{
		AddFunc: func(obj any, _ bool) { key(obj) },
		UpdateFunc: func(old, cur any) {
			if sameVersion(old, cur) {
				return
			}
			key(old) // the service-name label may have moved
			key(cur)
		},
		DeleteFunc: func(obj any) { key(unwrap(obj)) },
	}
}

func (r *run) podHandler() cache.ResourceEventHandler {
	affect := func(obj any) {
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			return
		}
		sc, ok := r.scope(pod.Namespace)
		if !ok {
			return
		}
		// The services whose slices point at this pod.
		list, _ := sc.sliceIndex.ByIndex(indexPod, pod.Namespace+"/"+pod.Name)
		for _, obj := range list {
			if sl, ok := obj.(*discoveryv1.EndpointSlice); ok {
				if name := sl.Labels[discoveryv1.LabelServiceName]; name != "" {
					r.mark(pod.Namespace + "/" + name)
				}
			}
		}
	}
	return cache.ResourceEventHandlerDetailedFuncs{
		// A slice may name a pod before the pod reaches the cache.
		AddFunc: func(obj any, initial bool) {
			if !initial {
				affect(obj)
			}
		},
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*corev1.Pod)
			c, ok2 := cur.(*corev1.Pod)
			if ok1 && ok2 && maps.Equal(o.Labels, c.Labels) && o.Spec.ServiceAccountName == c.Spec.ServiceAccountName && o.Spec.NodeName == c.Spec.NodeName {
				return
			}
			affect(cur)
		},
		DeleteFunc: func(obj any) { affect(unwrap(obj)) },
	}
}

func (r *run) nodeHandler() cache.ResourceEventHandler {
	topo := func(n *corev1.Node) [3]string {
		return [3]string{n.Labels[LabelRegion], n.Labels[LabelZone], n.Labels[LabelSubzone]}
	}
	return cache.ResourceEventHandlerDetailedFuncs{
		AddFunc: func(_ any, initial bool) {
			if !initial {
				r.markAll()
			}
		},
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*corev1.Node)
			c, ok2 := cur.(*corev1.Node)
			if ok1 && ok2 && topo(o) == topo(c) {
				return // heartbeats and status: nothing the source reads
			}
			r.markAll()
		},
		DeleteFunc: func(any) { r.markAll() },
	}
}

func sameVersion(old, cur any) bool {
	o, ok1 := old.(metav1.Object)
	c, ok2 := cur.(metav1.Object)
	return ok1 && ok2 && o.GetResourceVersion() == c.GetResourceVersion()
}

func unwrap(obj any) any {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return obj
}

// trimPod keeps only what the source reads, so a large cluster's pods cost
// little memory.
func trimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{
		TypeMeta: pod.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID,
			ResourceVersion: pod.ResourceVersion, Labels: pod.Labels,
		},
		Spec: corev1.PodSpec{ServiceAccountName: pod.Spec.ServiceAccountName, NodeName: pod.Spec.NodeName},
	}, nil
}

// trimNode keeps the name and topology labels.
func trimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	l := map[string]string{}
	for _, k := range []string{LabelRegion, LabelZone, LabelSubzone} {
		if v, ok := n.Labels[k]; ok {
			l[k] = v
		}
	}
	return &corev1.Node{
		TypeMeta:   n.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion, Labels: l},
	}, nil
}
