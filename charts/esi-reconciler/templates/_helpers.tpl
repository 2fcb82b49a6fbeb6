{{- define "esi.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "esi.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "esi.labels" -}}
app.kubernetes.io/name: {{ include "esi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "esi.selector" -}}
app.kubernetes.io/name: {{ include "esi.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "esi.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "esi.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "esi.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Environment shared by the reconciler and the worker: etcd and the catalog. */}}
{{- define "esi.env" -}}
- name: ESI_ETCD_ENDPOINTS
  value: {{ .Values.etcd.endpoints | quote }}
- name: ESI_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: ESI_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
{{- if .Values.etcd.discover }}
- name: ESI_ETCD_DISCOVER
  value: "true"
{{- end }}
{{- if .Values.etcd.tlsSecret }}
- name: ESI_ETCD_CA
  value: /etc/esi/etcd-tls/ca.crt
{{- end }}
{{- if .Values.etcd.credentialsSecret }}
- name: ESI_ETCD_USER
  valueFrom: {secretKeyRef: {name: {{ .Values.etcd.credentialsSecret }}, key: username}}
- name: ESI_ETCD_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ .Values.etcd.credentialsSecret }}, key: password}}
{{- end }}
{{- if .Values.catalog.configMap }}
- name: ESI_SCHEMAS
  value: /etc/esi/catalog/schemas.json
- name: ESI_TEMPLATE_MAPPINGS
  value: /etc/esi/catalog/template_mappings.json
{{- end }}
{{- end -}}

{{- define "esi.volumeMounts" -}}
{{- if .Values.etcd.tlsSecret }}
- name: etcd-tls
  mountPath: /etc/esi/etcd-tls
  readOnly: true
{{- end }}
{{- if .Values.catalog.configMap }}
- name: catalog
  mountPath: /etc/esi/catalog
  readOnly: true
{{- end }}
{{- end -}}

{{- define "esi.volumes" -}}
{{- if .Values.etcd.tlsSecret }}
- name: etcd-tls
  secret: {secretName: {{ .Values.etcd.tlsSecret }}}
{{- end }}
{{- if .Values.catalog.configMap }}
- name: catalog
  configMap: {name: {{ .Values.catalog.configMap }}}
{{- end }}
{{- end -}}
