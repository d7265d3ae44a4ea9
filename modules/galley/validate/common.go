package validate

import (
	"slices"
	"strconv"
	"strings"

	"github.com/meshd/meshd/modules/galley/api"
	security "istio.io/api/security/v1beta1"
)

// dryRunAnnotation marks an AuthorizationPolicy as evaluated but not enforced.
const dryRunAnnotation = "istio.io/dry-run"

// metadata checks name, namespace, labels and annotations with the
// Kubernetes rules Istio's API server would apply.
func (c *checker) metadata() {
	o := c.o
	if o.Name != "" {
		if o.Kind == api.KindGateway {
			// Gateways are referenced as namespace/name, so no dots.
			if !isK8sLabel(o.Name) {
				c.errf(api.CodeMetadata, "metadata.name", "Gateway name %q must be a DNS label: lowercase letters, digits and '-', no dots, at most 63 characters", o.Name)
			}
		} else if !isK8sSubdomain(o.Name) {
			c.errf(api.CodeMetadata, "metadata.name", "name %q must be a lowercase DNS subdomain: letters, digits, '-' and '.', at most 253 characters", o.Name)
		}
	}
	if !isK8sLabel(o.Namespace) {
		c.errf(api.CodeMetadata, "metadata.namespace", "namespace %q must be a lowercase DNS label: letters, digits and '-', at most 63 characters", o.Namespace)
	}
	c.labels("metadata.labels", o.Labels, api.CodeMetadata)
	for _, k := range sortedKeys(o.Annotations) {
		if err := checkLabelKey(k); err != nil {
			c.errf(api.CodeMetadata, key("metadata", "annotations", k), "invalid annotation key: %s", strings.TrimPrefix(err.Error(), "label "))
		}
	}
	if v, ok := o.Annotations[dryRunAnnotation]; ok {
		path := key("metadata", "annotations", dryRunAnnotation)
		ap, isAP := o.Spec.(*security.AuthorizationPolicy)
		switch {
		case !isAP:
			c.errf(api.CodeMetadata, path, "annotation %s is only supported on AuthorizationPolicy; remove it", dryRunAnnotation)
		case ap.GetAction() != security.AuthorizationPolicy_ALLOW && ap.GetAction() != security.AuthorizationPolicy_DENY:
			c.errf(api.CodeMetadata, path, "annotation %s works only with action ALLOW or DENY, not %s", dryRunAnnotation, ap.GetAction())
		default:
			if _, err := strconv.ParseBool(v); err != nil {
				c.errf(api.CodeMetadata, path, "annotation %s must be \"true\" or \"false\", got %q", dryRunAnnotation, v)
			}
		}
	}
}

// labels checks label keys and values, reporting under code.
func (c *checker) labels(path string, m map[string]string, code api.Code) {
	if len(m) == 0 {
		return
	}
	for _, k := range sortedKeys(m) {
		p := path + "[" + k + "]"
		if err := checkLabelKey(k); err != nil {
			c.errf(code, p, "%s", err.Error())
		}
		if err := checkLabelValue(m[k]); err != nil {
			c.errf(code, p, "%s", err.Error())
		}
	}
}

// selector checks workload selector labels. present says the selector field
// was given at all: a present selector without labels selects every
// workload in the namespace, which is legal but rarely meant.
func (c *checker) selector(path string, m map[string]string, present bool) {
	if !present {
		return
	}
	if len(m) == 0 {
		c.warnf(api.CodeEmptySelector, path, "selector has no labels, so it applies to every workload in namespace %s; add labels or remove the selector", c.o.Namespace)
		return
	}
	for _, k := range sortedKeys(m) {
		p := path + "[" + k + "]"
		v := m[k]
		switch {
		case k == "":
			c.errf(api.CodeSelector, p, "selector label key must not be empty")
		case strings.Contains(k, "*") || strings.Contains(v, "*"):
			c.errf(api.CodeSelector, p, "selector %s=%s contains a wildcard; selectors match exact label values only", k, v)
		default:
			if err := checkLabelKey(k); err != nil {
				c.errf(api.CodeSelector, p, "%s", err.Error())
			}
			if err := checkLabelValue(v); err != nil {
				c.errf(api.CodeSelector, p, "%s", err.Error())
			}
		}
	}
}

// exportTo checks an exportTo list: "." (own namespace), "*" (everyone),
// namespace names, and for ServiceEntries "~" (no one).
func (c *checker) exportTo(path string, list []string, allowNone, drWithSelector bool) {
	if len(list) == 0 {
		return
	}
	seen := make(map[string]bool, len(list))
	public, none := false, false
	for i, e := range list {
		p := path + "[" + strconv.Itoa(i) + "]"
		k := e
		if e == "." {
			k = c.o.Namespace
		}
		switch {
		case seen[k]:
			if k != e || slices.Contains(list, ".") && e == c.o.Namespace {
				c.errf(api.CodeExportTo, p, "exportTo lists namespace %s twice (\".\" means the object's own namespace)", c.o.Namespace)
			} else {
				c.errf(api.CodeExportTo, p, "exportTo lists %q twice", e)
			}
			continue
		case e == "*":
			public = true
		case e == "~":
			if !allowNone {
				c.errf(api.CodeExportTo, p, "exportTo \"~\" (export to no one) is only allowed on ServiceEntries")
				continue
			}
			none = true
		case e == ".":
		default:
			if !isK8sLabel(e) {
				c.errf(api.CodeExportTo, p, "exportTo entry %q is not \".\", \"*\" or a namespace name", e)
				continue
			}
		}
		seen[k] = true
	}
	if public && len(list) > 1 {
		c.errf(api.CodeExportTo, path, "exportTo \"*\" already exports to every namespace; remove the other entries")
	}
	if none && len(list) > 1 {
		c.errf(api.CodeExportTo, path, "exportTo \"~\" (no one) cannot be combined with other entries")
	}
	if drWithSelector && (len(seen) > 1 || !seen[c.o.Namespace]) {
		c.errf(api.CodeExportTo, path, "a DestinationRule with a workloadSelector can only be exported to its own namespace (\".\")")
	}
}

func sortedKeys[V any](m map[string]V) []string {
	if len(m) == 0 {
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
