{{/*
Names and labels. Selectors use only `selectorLabels` (name, instance, component): never the
chart version or anything else that changes on upgrade, since a Deployment's selector is
immutable.
*/}}

{{- define "runlog-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "runlog-relay.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "runlog-relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "runlog-relay.labels" -}}
helm.sh/chart: {{ include "runlog-relay.chart" . }}
app.kubernetes.io/name: {{ include "runlog-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: runlog-relay
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* What selects the operator's pods: stable across upgrades. */}}
{{- define "runlog-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "runlog-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "runlog-relay.operatorLabels" -}}
{{ include "runlog-relay.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "runlog-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "runlog-relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository[:tag][@digest]; the digest wins when set. */}}
{{- define "runlog-relay.imageRef" -}}
{{- $repository := index . 0 }}
{{- $tag := index . 1 }}
{{- $digest := index . 2 }}
{{- if $digest }}
{{- printf "%s@%s" $repository $digest }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{- define "runlog-relay.image" -}}
{{- include "runlog-relay.imageRef" (list .Values.image.repository (default .Chart.AppVersion .Values.image.tag) .Values.image.digest) }}
{{- end }}

{{/* The injected sidecar's image: the operator's unless overridden (one image runs both). */}}
{{- define "runlog-relay.sidecarImage" -}}
{{- $sidecar := .Values.injection.sidecar.image }}
{{- if or $sidecar.repository $sidecar.tag $sidecar.digest }}
{{- include "runlog-relay.imageRef" (list (default .Values.image.repository $sidecar.repository) (default (default .Chart.AppVersion .Values.image.tag) $sidecar.tag) $sidecar.digest) }}
{{- else }}
{{- include "runlog-relay.image" . }}
{{- end }}
{{- end }}

{{/* Name of the webhook configurations; the operator patches their caBundle in self-signed mode. */}}
{{- define "runlog-relay.webhookConfigName" -}}
{{- include "runlog-relay.fullname" . }}
{{- end }}

{{- define "runlog-relay.webhookCertSecret" -}}
{{- printf "%s-webhook-tls" (include "runlog-relay.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "runlog-relay.webhookCertificate" -}}
{{- printf "%s-webhook" (include "runlog-relay.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Where the cert-manager Secret is mounted; the operator reads tls.crt and tls.key there. */}}
{{- define "runlog-relay.webhookCertDir" -}}
/var/run/secrets/runlog-relay/webhook-tls
{{- end }}

{{/* True ("true") when the operator serves every namespace. */}}
{{- define "runlog-relay.clusterwide" -}}
{{- if not .Values.watchNamespaces }}true{{- end }}
{{- end }}

{{/*
The rules the operator needs in every namespace it serves. Kept equal to
runlog_relay.operator.permissions by tests/integration/test_helm.py.
*/}}
{{- define "runlog-relay.namespacedRules" -}}
- apiGroups: ["runlog-relay.dev"]
  resources: ["runlogstores"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["runlog-relay.dev"]
  resources: ["runlogstores/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if and .Values.peering.enabled .Values.watchNamespaces }}
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}

{{/* Cluster-scoped rules, needed in both modes (a ClusterRole either way). */}}
{{- define "runlog-relay.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.watchNamespaces }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- if and .Values.peering.enabled (not .Values.watchNamespaces) }}
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- if and .Values.webhook.enabled (not .Values.webhook.certManager.enabled) }}
- apiGroups: ["admissionregistration.k8s.io"]
  resources: ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"]
  resourceNames: [{{ include "runlog-relay.webhookConfigName" . | quote }}]
  verbs: ["get", "patch"]
{{- end }}
{{- end }}
