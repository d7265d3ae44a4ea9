package kube

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testservers"
	"github.com/meshd/meshd/modules/pilot/model"
	"github.com/meshd/meshd/modules/pilot/registry"
	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, clientGoBackground()...)
}

// clientGoBackground ignores client-go's process-wide goroutines: a
// certificate-reloading loop per client built from a kubeconfig with client
// certificate files (the test's admin), which has no stop, its work queue,
// and klog's flush daemon.
func clientGoBackground() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("k8s.io/client-go/transport.(*dynamicClientCert).run"),
		goleak.IgnoreAnyFunction("k8s.io/client-go/transport.(*dynamicClientCert).processNextWorkItem"),
		goleak.IgnoreAnyFunction("k8s.io/apimachinery/pkg/util/wait.PollImmediateUntil"),
		goleak.IgnoreTopFunction("k8s.io/apimachinery/pkg/util/wait.PollImmediateUntilWithContext.poller.func1.1"),
		goleak.IgnoreAnyFunction("k8s.io/client-go/util/workqueue.(*delayingType[...]).waitingLoop"),
		goleak.IgnoreAnyFunction("k8s.io/client-go/util/workqueue.(*Typed[...]).updateUnfinishedWorkLoop"),
		goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"),
	}
}

// sink keeps every state it is given.
type sink struct {
	mu     sync.Mutex
	states []registry.State
	ch     chan struct{}
}

func newSink() *sink { return &sink{ch: make(chan struct{}, 1)} }

func (s *sink) Update(st registry.State) {
	s.mu.Lock()
	s.states = append(s.states, st)
	s.mu.Unlock()
	select {
	case s.ch <- struct{}{}:
	default:
	}
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.states)
}

func (s *sink) last() (registry.State, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.states) == 0 {
		return registry.State{}, false
	}
	return s.states[len(s.states)-1], true
}

func (s *sink) waitFor(t *testing.T, timeout time.Duration, what string, cond func(registry.State) bool) registry.State {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if st, ok := s.last(); ok && cond(st) {
			return st
		}
		select {
		case <-s.ch:
		case <-deadline.C:
			st, _ := s.last()
			t.Fatalf("timed out after %s waiting for %s; last state:%s", timeout, what, dump(st))
		}
	}
}

func dump(st registry.State) string {
	var b strings.Builder
	for _, s := range st.Services {
		fmt.Fprintf(&b, "\n  %s/%s ports=%v", s.Hostname, s.Namespace, s.Ports)
		for _, e := range s.Endpoints {
			fmt.Fprintf(&b, "\n    %s:%d->%d %s %s sa=%s loc=%s labels=%v", e.Address, e.Port, e.ServicePort, e.Health, e.Workload, e.ServiceAccount, e.Locality, e.Labels)
		}
	}
	return b.String()
}

func find(st registry.State, host string) *model.Service {
	for _, s := range st.Services {
		if s.Hostname == host {
			return s
		}
	}
	return nil
}

// cluster is a real API server with helpers to create objects.
type cluster struct {
	t      *testing.T
	api    *testservers.KubeAPI
	client kubernetes.Interface
	ctx    context.Context
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	api := testservers.StartKube(t)
	rc, err := clientcmd.BuildConfigFromFlags("", api.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{t: t, api: api, client: client, ctx: context.Background()}
}

func (c *cluster) must(err error) {
	c.t.Helper()
	if err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) namespace(name string) {
	c.t.Helper()
	_, err := c.client.CoreV1().Namespaces().Create(c.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	c.must(err)
	_, err = c.client.CoreV1().ServiceAccounts(name).Create(c.ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	c.must(err)
}

func (c *cluster) serviceAccount(ns, name string) {
	c.t.Helper()
	_, err := c.client.CoreV1().ServiceAccounts(ns).Create(c.ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	c.must(err)
}

func (c *cluster) node(name string, labels map[string]string) {
	c.t.Helper()
	_, err := c.client.CoreV1().Nodes().Create(c.ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	c.must(err)
}

func (c *cluster) pod(ns, name, sa, node string, labels map[string]string) {
	c.t.Helper()
	_, err := c.client.CoreV1().Pods(ns).Create(c.ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa, NodeName: node,
			Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}},
		},
	}, metav1.CreateOptions{})
	c.must(err)
}

func (c *cluster) service(ns, name string, ports ...corev1.ServicePort) {
	c.t.Helper()
	_, err := c.client.CoreV1().Services(ns).Create(c.ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec:       corev1.ServiceSpec{Ports: ports, Selector: map[string]string{"app": name}},
	}, metav1.CreateOptions{})
	c.must(err)
}

// ep is one slice endpoint: address, pod (may be empty), readiness, zone.
type ep struct {
	addr, pod string
	ready     bool
	zone      string
	node      string
}

func (c *cluster) slice(ns, name, service string, ports map[string]int32, eps ...ep) *discoveryv1.EndpointSlice {
	c.t.Helper()
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for pn, p := range ports {
		sl.Ports = append(sl.Ports, discoveryv1.EndpointPort{Name: ptr.To(pn), Port: ptr.To(p), Protocol: ptr.To(corev1.ProtocolTCP)})
	}
	for _, e := range eps {
		x := discoveryv1.Endpoint{Addresses: []string{e.addr}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(e.ready)}}
		if e.pod != "" {
			x.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: e.pod}
		}
		if e.zone != "" {
			x.Zone = ptr.To(e.zone)
		}
		if e.node != "" {
			x.NodeName = ptr.To(e.node)
		}
		sl.Endpoints = append(sl.Endpoints, x)
	}
	out, err := c.client.DiscoveryV1().EndpointSlices(ns).Create(c.ctx, sl, metav1.CreateOptions{})
	c.must(err)
	return out
}

func runSource(t *testing.T, cfg Config, client kubernetes.Interface) (*sink, func()) {
	t.Helper()
	src, err := New(cfg, client, Options{SyncTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	snk := newSink()
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, snk) }()
	return snk, func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}
}

func TestRealAPIServer(t *testing.T) {
	c := startCluster(t)
	for _, ns := range []string{"shop", "other", "ignored"} {
		c.namespace(ns)
	}
	c.serviceAccount("shop", "reviews")
	c.node("node-a", map[string]string{LabelRegion: "eu-west", LabelZone: "eu-west-1a", LabelSubzone: "rack7", "unrelated": "x"})
	c.pod("shop", "reviews-v1-abc", "reviews", "node-a", map[string]string{"app": "reviews", "version": "v1"})
	c.pod("shop", "reviews-v2-def", "reviews", "node-gone", map[string]string{"app": "reviews", "version": "v2"})
	c.service("shop", "reviews",
		corev1.ServicePort{Name: "grpc", Port: 9080, TargetPort: intstr.FromInt32(8080)},
		corev1.ServicePort{Name: "metrics", Port: 9090, AppProtocol: ptr.To("http")},
		corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
	)
	c.slice("shop", "reviews-1", "reviews", map[string]int32{"grpc": 8080, "metrics": 9090},
		ep{addr: "10.1.0.1", pod: "reviews-v1-abc", ready: true},
		ep{addr: "10.1.0.2", pod: "reviews-v2-def", ready: true, zone: "eu-west-1b"},
		ep{addr: "10.1.0.3", ready: false},
	)
	c.service("ignored", "hidden", corev1.ServicePort{Name: "http", Port: 80})

	snk, stop := runSource(t, Config{Namespaces: []string{"shop", "other"}, NodeLocality: true}, c.client)
	defer stop()

	const host = "reviews.shop.svc.cluster.local"
	st := snk.waitFor(t, 20*time.Second, "first state", func(registry.State) bool { return true })
	if find(st, "hidden.ignored.svc.cluster.local") != nil {
		t.Errorf("a service outside the namespace filter was discovered")
	}
	svc := find(st, host)
	if svc == nil {
		t.Fatalf("reviews missing from the first state:%s", dump(st))
	}
	if len(svc.Addresses) != 1 || !strings.HasPrefix(svc.Addresses[0], "10.96.") {
		t.Errorf("addresses = %v, want the cluster IP", svc.Addresses)
	}
	wantPorts := []model.Port{
		{Name: "grpc", Number: 9080, Protocol: model.ProtocolGRPC, TargetPort: 8080},
		{Name: "metrics", Number: 9090, Protocol: model.ProtocolHTTP, TargetPort: 9090},
	}
	if fmt.Sprint(svc.Ports) != fmt.Sprint(wantPorts) {
		t.Errorf("ports = %+v, want %+v (UDP dropped)", svc.Ports, wantPorts)
	}
	byAddr := map[string]*model.Endpoint{}
	for _, e := range svc.EndpointsFor(9080) {
		byAddr[e.Address] = e
	}
	if len(byAddr) != 3 {
		t.Fatalf("endpoints on 9080:%s", dump(st))
	}
	e1 := byAddr["10.1.0.1"]
	if e1.Port != 8080 || e1.Health != model.Healthy || e1.ServiceAccount != "reviews" || e1.Namespace != "shop" ||
		e1.Labels["version"] != "v1" || e1.Workload != "reviews-v1-abc" {
		t.Errorf("e1 = %+v", e1)
	}
	if e1.Locality != (model.Locality{Region: "eu-west", Zone: "eu-west-1a", Subzone: "rack7"}) {
		t.Errorf("e1 locality = %v, want the node's topology labels", e1.Locality)
	}
	if e2 := byAddr["10.1.0.2"]; e2.Locality != (model.Locality{Zone: "eu-west-1b"}) {
		t.Errorf("e2 locality = %v, want the slice zone (its node does not exist)", e2.Locality)
	}
	if e3 := byAddr["10.1.0.3"]; e3.Health != model.Unhealthy || e3.ServiceAccount != "" {
		t.Errorf("e3 = %+v, want unhealthy without identity", e3)
	}

	t.Run("no updates for changes the source does not read", func(t *testing.T) {
		before := snk.count()
		pod, err := c.client.CoreV1().Pods("shop").Get(c.ctx, "reviews-v1-abc", metav1.GetOptions{})
		c.must(err)
		pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		pod.Status.PodIP = "10.1.0.1"
		_, err = c.client.CoreV1().Pods("shop").UpdateStatus(c.ctx, pod, metav1.UpdateOptions{})
		c.must(err)
		pod, err = c.client.CoreV1().Pods("shop").Get(c.ctx, "reviews-v1-abc", metav1.GetOptions{})
		c.must(err)
		pod.Annotations = map[string]string{"touched": "yes"}
		_, err = c.client.CoreV1().Pods("shop").Update(c.ctx, pod, metav1.UpdateOptions{})
		c.must(err)
		node, err := c.client.CoreV1().Nodes().Get(c.ctx, "node-a", metav1.GetOptions{})
		c.must(err)
		node.Labels["unrelated"] = "y"
		_, err = c.client.CoreV1().Nodes().Update(c.ctx, node, metav1.UpdateOptions{})
		c.must(err)
		svcObj, err := c.client.CoreV1().Services("shop").Get(c.ctx, "reviews", metav1.GetOptions{})
		c.must(err)
		svcObj.Annotations = map[string]string{"note": "irrelevant"}
		_, err = c.client.CoreV1().Services("shop").Update(c.ctx, svcObj, metav1.UpdateOptions{})
		c.must(err)
		time.Sleep(time.Second)
		if n := snk.count() - before; n != 0 {
			t.Fatalf("%d updates for changes that alter no service", n)
		}
	})

	t.Run("endpoint readiness", func(t *testing.T) {
		sl, err := c.client.DiscoveryV1().EndpointSlices("shop").Get(c.ctx, "reviews-1", metav1.GetOptions{})
		c.must(err)
		sl.Endpoints[0].Conditions.Ready = ptr.To(false)
		_, err = c.client.DiscoveryV1().EndpointSlices("shop").Update(c.ctx, sl, metav1.UpdateOptions{})
		c.must(err)
		snk.waitFor(t, 5*time.Second, "10.1.0.1 unhealthy", func(st registry.State) bool {
			for _, e := range find(st, host).Endpoints {
				if e.Address == "10.1.0.1" {
					return e.Health == model.Unhealthy
				}
			}
			return false
		})
	})

	t.Run("pod label change reaches endpoints", func(t *testing.T) {
		pod, err := c.client.CoreV1().Pods("shop").Get(c.ctx, "reviews-v2-def", metav1.GetOptions{})
		c.must(err)
		pod.Labels["version"] = "v3"
		_, err = c.client.CoreV1().Pods("shop").Update(c.ctx, pod, metav1.UpdateOptions{})
		c.must(err)
		snk.waitFor(t, 5*time.Second, "v3 label", func(st registry.State) bool {
			for _, e := range find(st, host).Endpoints {
				if e.Address == "10.1.0.2" {
					return e.Labels["version"] == "v3"
				}
			}
			return false
		})
	})

	t.Run("node appearing gives locality", func(t *testing.T) {
		c.node("node-gone", map[string]string{LabelRegion: "eu-west", LabelZone: "eu-west-1b"})
		snk.waitFor(t, 5*time.Second, "region from new node", func(st registry.State) bool {
			for _, e := range find(st, host).Endpoints {
				if e.Address == "10.1.0.2" {
					return e.Locality.Region == "eu-west"
				}
			}
			return false
		})
	})

	t.Run("ExternalName resolves by DNS", func(t *testing.T) {
		_, err := c.client.CoreV1().Services("other").Create(c.ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "payments"},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "payments.example.com",
				Ports: []corev1.ServicePort{{Name: "https", Port: 443}}},
		}, metav1.CreateOptions{})
		c.must(err)
		st := snk.waitFor(t, 5*time.Second, "payments", func(st registry.State) bool {
			return find(st, "payments.other.svc.cluster.local") != nil
		})
		s := find(st, "payments.other.svc.cluster.local")
		if s.Resolution != model.ResolutionDNS || len(s.Endpoints) != 1 || s.Endpoints[0].Address != "payments.example.com" || s.Endpoints[0].Port != 443 {
			t.Fatalf("ExternalName service:%s", dump(st))
		}
	})

	t.Run("service in a watched namespace appears and goes", func(t *testing.T) {
		c.service("other", "ratings", corev1.ServicePort{Name: "http", Port: 8000})
		c.slice("other", "ratings-1", "ratings", map[string]int32{"http": 8000}, ep{addr: "10.2.0.1", ready: true})
		snk.waitFor(t, 5*time.Second, "ratings", func(st registry.State) bool {
			s := find(st, "ratings.other.svc.cluster.local")
			return s != nil && len(s.Endpoints) == 1
		})
		c.must(c.client.DiscoveryV1().EndpointSlices("other").Delete(c.ctx, "ratings-1", metav1.DeleteOptions{}))
		snk.waitFor(t, 5*time.Second, "ratings without endpoints", func(st registry.State) bool {
			s := find(st, "ratings.other.svc.cluster.local")
			return s != nil && len(s.Endpoints) == 0
		})
		c.must(c.client.CoreV1().Services("other").Delete(c.ctx, "ratings", metav1.DeleteOptions{}))
		snk.waitFor(t, 5*time.Second, "ratings gone", func(st registry.State) bool {
			return find(st, "ratings.other.svc.cluster.local") == nil
		})
	})
}

// TestResyncCausesNoUpdates runs the source with a short resync period:
// informers redeliver every object, and nothing is reported.
func TestResyncCausesNoUpdates(t *testing.T) {
	c := startCluster(t)
	c.namespace("shop")
	c.service("shop", "web", corev1.ServicePort{Name: "http", Port: 80})
	c.slice("shop", "web-1", "web", map[string]int32{"http": 8080}, ep{addr: "10.3.0.1", ready: true})
	snk, stop := runSource(t, Config{Resync: 200 * time.Millisecond}, c.client)
	defer stop()
	snk.waitFor(t, 20*time.Second, "web", func(st registry.State) bool { return find(st, "web.shop.svc.cluster.local") != nil })
	time.Sleep(1500 * time.Millisecond)
	if n := snk.count(); n != 1 {
		t.Fatalf("%d updates over several resyncs, want 1 (the first)", n)
	}
}
