// Package validate checks single config objects against Istio's field rules:
// host names, ports, regexes, durations, weights, TLS, authorization rules
// and the rest. Each finding names its code, the field path and, through
// the object's line index, the exact line.
//
// The rules follow Istio's own validation (pkg/config/validation) so that
// config Istio accepts is accepted here and config Istio rejects is
// rejected, with messages written for people fixing YAML by hand. Where
// Istio only logs or silently ignores something likely to be a mistake,
// validate reports a warning instead.
package validate

import (
	"fmt"
	"strconv"

	"google.golang.org/protobuf/types/known/durationpb"

	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"

	"github.com/meshd/meshd/modules/galley/api"
)

// Object validates one object and returns its findings, unsorted.
func Object(o *api.Object) []api.Finding {
	c := checker{o: o}
	c.check()
	return c.out
}

// Objects validates each object and returns all findings, unsorted.
func Objects(objs []*api.Object) []api.Finding {
	var out []api.Finding
	for _, o := range objs {
		c := checker{o: o, out: out}
		c.check()
		out = c.out
	}
	return out
}

// checker collects the findings of one object.
type checker struct {
	o   *api.Object
	out []api.Finding
}

func (c *checker) check() {
	c.metadata()
	switch spec := c.o.Spec.(type) {
	case *networking.VirtualService:
		c.virtualService(spec)
	case *networking.DestinationRule:
		c.destinationRule(spec)
	case *networking.Gateway:
		c.gateway(spec)
	case *networking.ServiceEntry:
		c.serviceEntry(spec)
	case *networking.WorkloadEntry:
		c.workloadEntry(spec)
	case *networking.WorkloadGroup:
		c.workloadGroup(spec)
	case *networking.Sidecar:
		c.sidecar(spec)
	case *security.PeerAuthentication:
		c.peerAuthentication(spec)
	case *security.AuthorizationPolicy:
		c.authorizationPolicy(spec)
	case *security.RequestAuthentication:
		c.requestAuthentication(spec)
	case nil:
		c.errf(api.CodeRequired, "spec", "object has no spec")
	default:
		c.errf(api.CodeRequired, "spec", "spec type %T is not a supported kind", spec)
	}
}

func (c *checker) add(code api.Code, sev api.Severity, path, format string, args []any) {
	msg := format
	if len(args) > 0 {
		msg = fmt.Sprintf(format, args...)
	}
	c.out = append(c.out, api.Finding{
		Code:     code,
		Severity: sev,
		Object:   c.o.Key(),
		File:     c.o.Source.File,
		Line:     c.o.Line(path),
		Field:    path,
		Message:  msg,
	})
}

// errf reports an error at field path.
func (c *checker) errf(code api.Code, path, format string, args ...any) {
	c.add(code, api.SeverityError, path, format, args)
}

// warnf reports a warning at field path.
func (c *checker) warnf(code api.Code, path, format string, args ...any) {
	c.add(code, api.SeverityWarning, path, format, args)
}

// errIf reports err, if any, as an error at path.
func (c *checker) errIf(code api.Code, path string, err error) {
	if err != nil {
		c.add(code, api.SeverityError, path, "%s", []any{err.Error()})
	}
}

// at builds the path of list item i of field name under base.
func at(base, name string, i int) string {
	return base + "." + name + "[" + strconv.Itoa(i) + "]"
}

// key builds the path of map entry k of field name under base.
func key(base, name, k string) string {
	return base + "." + name + "[" + k + "]"
}

// duration checks a duration the way Istio does for most fields: at least
// 1ms and a whole number of milliseconds.
func (c *checker) duration(path string, d *durationpb.Duration) {
	if d == nil {
		return
	}
	dur := d.AsDuration()
	switch {
	case dur < 0:
		c.errf(api.CodeDuration, path, "duration %s is negative", dur)
	case dur < 1e6:
		c.errf(api.CodeDuration, path, "duration %s is too short: the minimum is 1ms (leave the field out for the default)", dur)
	case dur%1e6 != 0:
		c.errf(api.CodeDuration, path, "duration %s is finer than 1ms; Envoy supports millisecond precision only", dur)
	}
}

// percent checks an integer percentage.
func (c *checker) percent(path string, v int32) {
	if v < 0 || v > 100 {
		c.errf(api.CodePercent, path, "percentage %d is not in 0..100", v)
	}
}

// fraction checks a networking.Percent: 0, or 0.0001..100.
func (c *checker) fraction(path string, p *networking.Percent) {
	if p == nil {
		return
	}
	if v := p.GetValue(); v < 0 || v > 100 || (v > 0 && v < 0.0001) {
		c.errf(api.CodePercent, path+".value", "percentage %g is not 0 and not in 0.0001..100", v)
	}
}

// port checks a port number is in 1..65535.
func (c *checker) port(path string, n uint32) {
	if n < 1 || n > 65535 {
		c.errf(api.CodePort, path, "port %d is not in 1..65535", n)
	}
}
