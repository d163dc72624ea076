{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "vip-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, with the chart name appended unless it already contains it. */}}
{{- define "vip-operator.fullname" -}}
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

{{- define "vip-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vip-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vip-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "vip-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "vip-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vip-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vip-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* "true" when the chart creates the default credentials Secret from accessKey/secretKey. */}}
{{- define "vip-operator.createCredentialsSecret" -}}
{{- if .Values.credentials.accessKey }}true{{ end }}
{{- end }}

{{/* Name of the default credentials Secret (created or existing); empty when there is none. */}}
{{- define "vip-operator.credentialsSecretName" -}}
{{- if .Values.credentials.existingSecret }}
{{- .Values.credentials.existingSecret }}
{{- else if .Values.credentials.accessKey }}
{{- printf "%s-credentials" (include "vip-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Rules needed in every watched namespace (a ClusterRole when all namespaces are watched).
Mirrors the Scope::Watched rows of src/rbac.rs; tests/helm.rs checks that they agree.
*/}}
{{- define "vip-operator.watchedRules" -}}
- apiGroups: ["vipoperator.dev"]
  resources: ["vipbindings"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["vipoperator.dev"]
  resources: ["vipbindings/status"]
  verbs: ["patch"]
- apiGroups: ["vipoperator.dev"]
  resources: ["vipbindings/finalizers"]
  verbs: ["update"]
- apiGroups: ["vipoperator.dev"]
  resources: ["vipgroups"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["vipoperator.dev"]
  resources: ["vipgroups/status"]
  verbs: ["patch"]
- apiGroups: ["vipoperator.dev"]
  resources: ["vipgroups/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
{{- if .Values.credentialsProtection.enabled }}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["patch"]
{{- end }}
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Rules needed in the release namespace (Scope::OperatorNamespace rows); empty when no feature
needs any.
*/}}
{{- define "vip-operator.operatorNamespaceRules" -}}
{{- if .Values.leaderElection.enabled }}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "patch"]
{{- end }}
{{- with include "vip-operator.credentialsSecretName" . }}
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: [{{ . | quote }}]
  verbs: ["get"]
{{- end }}
{{- end }}

{{/* Fails rendering on combinations of values the schema cannot express. */}}
{{- define "vip-operator.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicaCount is %d but leaderElection.enabled is false: replicas would reconcile the same VipBindings at once. Set leaderElection.enabled=true or replicaCount=1." (int .Values.replicaCount)) }}
{{- end }}
{{- $c := .Values.credentials }}
{{- if and $c.existingSecret (or $c.accessKey $c.secretKey $c.securityToken $c.projectId $c.region) }}
{{- fail "credentials.existingSecret is set together with credentials.accessKey/secretKey/securityToken/projectId/region: use either an existing Secret or let the chart create one, not both." }}
{{- end }}
{{- if and (not $c.accessKey) (or $c.secretKey $c.securityToken $c.projectId $c.region) }}
{{- fail "credentials.secretKey/securityToken/projectId/region are set without credentials.accessKey: the chart creates a credentials Secret only when accessKey and secretKey are both given." }}
{{- end }}
{{- if and $c.accessKey (not $c.secretKey) }}
{{- fail "credentials.accessKey is set without credentials.secretKey." }}
{{- end }}
{{- if and $c.metadataService (or $c.existingSecret $c.accessKey) }}
{{- fail "credentials.metadataService is set together with a credentials Secret: choose one default credentials source." }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled: the ServiceMonitor scrapes the metrics Service." }}
{{- end }}
{{- end }}
