{{- /* Names and labels of the demo workload (only this chart's own templates use them). */ -}}
{{- define "llm-sidecar.demo.name" -}}
{{- printf "%s-%s" (include "llm-sidecar.fullname" . | trunc 50 | trimSuffix "-") .Values.app.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llm-sidecar.demo.selectorLabels" -}}
app.kubernetes.io/name: {{ .Values.app.name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: llm-sidecar
{{- end -}}

{{- define "llm-sidecar.demo.labels" -}}
{{ include "llm-sidecar.demo.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}
