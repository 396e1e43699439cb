{{- /*
The library: named templates that put llm-sidecar into a pod spec. This chart's own demo
Deployment uses them, and so can any chart that depends on this one:

  spec:
    template:
      metadata:
        annotations:
          {{- include "llm-sidecar.podAnnotations" . | nindent 10 }}
      spec:
        initContainers:                  # native mode (Kubernetes >= 1.29): the sidecar is here
          {{- include "llm-sidecar.initContainers" . | nindent 10 }}
        containers:
          - name: my-app
            ...
          {{- include "llm-sidecar.containers" . | nindent 10 }}   # classic mode: here
        volumes:
          {{- include "llm-sidecar.volumes" . | nindent 10 }}
  ---
  {{ include "llm-sidecar.policyConfigMap" . }}    # in a template file of its own

Each takes the chart's root context `.`, and reads the sidecar's values from
`.Values.llm-sidecar` (a parent chart that depends on this one) or `.Values` (this chart).
With an alias, pass them yourself: (dict "root" $ "values" .Values.mySidecar).

`llm-sidecar.container` renders the container alone (with `restartPolicy: Always` in native
mode) for placing it by hand; `llm-sidecar.initContainers` / `llm-sidecar.containers` render it
only in the list where the configured mode needs it, so the pod spec does not change with it.
*/ -}}

{{- /* Resolve the call's argument into .out: root (the chart context) and v (the values). */ -}}
{{- define "llm-sidecar.resolve" -}}
{{- $in := .in -}}
{{- $root := $in -}}
{{- if hasKey $in "root" -}}{{- $root = $in.root -}}{{- end -}}
{{- $v := $root.Values -}}
{{- if hasKey $in "values" -}}
{{- $v = $in.values -}}
{{- else if hasKey $root.Values "llm-sidecar" -}}
{{- $v = index $root.Values "llm-sidecar" -}}
{{- end -}}
{{- $_ := set .out "root" $root -}}
{{- $_ = set .out "v" $v -}}
{{- end -}}

{{- define "llm-sidecar.fullname" -}}
{{- $c := dict -}}{{- include "llm-sidecar.resolve" (dict "in" . "out" $c) -}}
{{- if $c.v.fullnameOverride -}}
{{- $c.v.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "llm-sidecar" $c.root.Release.Name -}}
{{- $c.root.Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-llm-sidecar" $c.root.Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- /* The ConfigMap the policy volume mounts: the existing one, or the rendered one. */ -}}
{{- define "llm-sidecar.policyConfigMapName" -}}
{{- $c := dict -}}{{- include "llm-sidecar.resolve" (dict "in" . "out" $c) -}}
{{- if $c.v.policies.existingConfigMap -}}
{{- $c.v.policies.existingConfigMap -}}
{{- else -}}
{{- printf "%s-policies" (include "llm-sidecar.fullname" . | trunc 54 | trimSuffix "-") -}}
{{- end -}}
{{- end -}}

{{- define "llm-sidecar.labels" -}}
{{- $c := dict -}}{{- include "llm-sidecar.resolve" (dict "in" . "out" $c) -}}
app.kubernetes.io/name: llm-sidecar
app.kubernetes.io/instance: {{ $c.root.Release.Name }}
app.kubernetes.io/version: {{ $c.v.image.tag | quote }}
app.kubernetes.io/managed-by: {{ $c.root.Release.Service }}
{{- end -}}

{{- define "llm-sidecar.native" -}}
{{- $c := dict -}}{{- include "llm-sidecar.resolve" (dict "in" . "out" $c) -}}
{{- if eq $c.v.mode "native" -}}
{{- if semverCompare "<1.29.0-0" $c.root.Capabilities.KubeVersion.Version -}}
{{- fail (printf "llm-sidecar: mode native needs Kubernetes >= 1.29 (init containers with restartPolicy: Always); this cluster is %s: set mode: classic" $c.root.Capabilities.KubeVersion.Version) -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{- /* The inline policy files as JSON: policies.files, else the demo's (app.policies). */ -}}
{{- define "llm-sidecar.policyFiles" -}}
{{- $c := dict -}}{{- include "llm-sidecar.resolve" (dict "in" . "out" $c) -}}
{{- $files := dig "files" dict $c.v.policies -}}
{{- if and (not $files) $c.v.app.enabled -}}{{- $files = $c.v.app.policies -}}{{- end -}}
{{- if not $files -}}
{{- fail "llm-sidecar: no policies: set policies.files (inline policy files) or policies.existingConfigMap (a ConfigMap managed elsewhere)" -}}
{{- end -}}
{{- toJson $files -}}
{{- end -}}

{{- /* The policy ConfigMap, for inline policies (nothing when existingConfigMap is set). */ -}}
{{- define "llm-sidecar.policyConfigMap" -}}
{{- $c := dict -}}{{- include "llm-sidecar.resolve" (dict "in" . "out" $c) -}}
{{- if not $c.v.policies.existingConfigMap -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "llm-sidecar.policyConfigMapName" . }}
  labels:
    {{- include "llm-sidecar.labels" . | nindent 4 }}
    app.kubernetes.io/component: policies
data:
  {{- range $name, $text := include "llm-sidecar.policyFiles" . | fromJson }}
  {{ $name }}: {{ $text | quote }}
  {{- end }}
{{- end -}}
{{- end -}}

{{- /* Pod annotations: a checksum of inline policies, so a change rolls the pods. A GitOps-
managed existing ConfigMap gets none: the sidecar hot-reloads it without a restart. */ -}}
{{- define "llm-sidecar.podAnnotations" -}}
{{- $c := dict -}}{{- include "llm-sidecar.resolve" (dict "in" . "out" $c) -}}
{{- if and (not $c.v.policies.existingConfigMap) $c.v.policies.rollOnChange -}}
checksum/llm-sidecar-policies: {{ include "llm-sidecar.policyFiles" . | sha256sum }}
{{- end -}}
{{- end -}}

{{- define "llm-sidecar.volumes" -}}
{{- $c := dict -}}{{- include "llm-sidecar.resolve" (dict "in" . "out" $c) -}}
- name: llm-sidecar-policies
  configMap:
    name: {{ include "llm-sidecar.policyConfigMapName" . }}
- name: llm-sidecar-state
  {{- if $c.v.state.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ $c.v.state.existingClaim }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ $c.v.state.sizeLimit }}
  {{- end }}
- name: llm-sidecar-tmp
  emptyDir:
    sizeLimit: 16Mi
{{- end -}}

{{- define "llm-sidecar.initContainers" -}}
{{- if include "llm-sidecar.native" . -}}
{{- include "llm-sidecar.container" . -}}
{{- end -}}
{{- end -}}

{{- define "llm-sidecar.containers" -}}
{{- if not (include "llm-sidecar.native" .) -}}
{{- include "llm-sidecar.container" . -}}
{{- end -}}
{{- end -}}

{{- define "llm-sidecar.probe" -}}
httpGet:
  path: {{ .path }}
  port: sidecar-ops
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
failureThreshold: {{ .failureThreshold }}
{{- end -}}

{{- define "llm-sidecar.container" -}}
{{- $c := dict -}}{{- include "llm-sidecar.resolve" (dict "in" . "out" $c) -}}
{{- $v := $c.v -}}
{{- $loopback := has $v.proxyHost (list "127.0.0.1" "::1" "localhost") -}}
- name: {{ $v.containerName }}
  {{- if $v.image.digest }}
  image: "{{ $v.image.repository }}@{{ $v.image.digest }}"
  {{- else }}
  image: "{{ $v.image.repository }}:{{ $v.image.tag }}"
  {{- end }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if include "llm-sidecar.native" . }}
  restartPolicy: Always
  {{- end }}
  command: ["llm-sidecar"]
  args: ["serve"]
  env:
    - name: SIDECAR_POLICIES
      value: /etc/llm-sidecar/policies
    - name: SIDECAR_STATE_DIR
      value: /var/lib/llm-sidecar
    - name: SIDECAR_HOST
      value: {{ $v.proxyHost | quote }}
    - name: SIDECAR_PORT
      value: {{ $v.ports.proxy | quote }}
    - name: SIDECAR_OPS_HOST
      value: "0.0.0.0"
    - name: SIDECAR_OPS_PORT
      value: {{ $v.ports.ops | quote }}
    - name: SIDECAR_DRAIN_TIMEOUT
      value: {{ $v.drainTimeoutSeconds | quote }}
    - name: SIDECAR_LOG_LEVEL
      value: {{ $v.logLevel | quote }}
    - name: K8S_POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: K8S_NAMESPACE_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    - name: K8S_NODE_NAME
      valueFrom:
        fieldRef:
          fieldPath: spec.nodeName
    - name: K8S_POD_UID
      valueFrom:
        fieldRef:
          fieldPath: metadata.uid
    - name: OTEL_SERVICE_NAME
      value: {{ $v.otel.serviceName | quote }}
    {{- if $v.otel.endpoint }}
    - name: OTEL_EXPORTER_OTLP_ENDPOINT
      value: {{ $v.otel.endpoint | quote }}
    - name: OTEL_EXPORTER_OTLP_PROTOCOL
      value: {{ $v.otel.protocol | quote }}
    - name: OTEL_TRACES_SAMPLER
      value: parentbased_traceidratio
    - name: OTEL_TRACES_SAMPLER_ARG
      value: {{ $v.otel.traceSampleRatio | toString | quote }}
    {{- end }}
    {{- if $v.otel.resourceAttributes }}
    - name: OTEL_RESOURCE_ATTRIBUTES
      value: {{ include "llm-sidecar.resourceAttributes" $v.otel.resourceAttributes | quote }}
    {{- end }}
    {{- if $v.redis.urlSecret.name }}
    - name: {{ $v.redis.env }}
      valueFrom:
        secretKeyRef:
          name: {{ $v.redis.urlSecret.name }}
          key: {{ $v.redis.urlSecret.key }}
    {{- end }}
    {{- if $v.usageTokenSecret.name }}
    - name: SIDECAR_USAGE_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ $v.usageTokenSecret.name }}
          key: {{ $v.usageTokenSecret.key }}
    {{- end }}
    {{- range $v.secretEnv }}
    - name: {{ .env }}
      valueFrom:
        secretKeyRef:
          name: {{ .secretName }}
          key: {{ .key }}
          {{- if dig "optional" false . }}
          optional: true
          {{- end }}
    {{- end }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: sidecar-ops
      containerPort: {{ $v.ports.ops }}
      protocol: TCP
    {{- if not $loopback }}
    - name: sidecar-proxy
      containerPort: {{ $v.ports.proxy }}
      protocol: TCP
    {{- end }}
  startupProbe:
    {{- include "llm-sidecar.probe" $v.probes.startup | nindent 4 }}
  livenessProbe:
    {{- include "llm-sidecar.probe" $v.probes.liveness | nindent 4 }}
  readinessProbe:
    {{- include "llm-sidecar.probe" $v.probes.readiness | nindent 4 }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  volumeMounts:
    - name: llm-sidecar-policies
      mountPath: /etc/llm-sidecar/policies
      readOnly: true
    - name: llm-sidecar-state
      mountPath: /var/lib/llm-sidecar
    - name: llm-sidecar-tmp
      mountPath: /tmp
{{- end -}}

{{- define "llm-sidecar.resourceAttributes" -}}
{{- $pairs := list -}}
{{- range $key, $value := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $key (toString $value)) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
