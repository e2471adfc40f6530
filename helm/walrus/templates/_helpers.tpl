{{/*
Names. The full name is cut to 52 characters: a StatefulSet's name must
leave room for its pods' ordinals (host names are at most 63) and for the
controller-revision-hash label.
*/}}
{{- define "walrus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "walrus.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The headless Service: the StatefulSet's serviceName, the nodes' DNS domain. */}}
{{- define "walrus.headless" -}}
{{- printf "%s-headless" (include "walrus.fullname" .) }}
{{- end }}

{{- define "walrus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "walrus.labels" -}}
helm.sh/chart: {{ include "walrus.chart" . }}
{{ include "walrus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "walrus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "walrus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "walrus.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The DNS name of pod $i: <fullname>-<i>.<headless>.<namespace>.svc.<domain>.
It must equal what that pod advertises (WALRUS_RAFT_ADVERTISE_HOST in the
StatefulSet), so that a node recognises (and skips) its own join address.
*/}}
{{- define "walrus.podHost" -}}
{{- $ := index . 0 }}
{{- printf "%s-%d.%s.%s.svc.%s" (include "walrus.fullname" $) (index . 1) (include "walrus.headless" $) $.Release.Namespace $.Values.cluster.domain }}
{{- end }}

{{/* The Raft addresses of every pod: each node joins through the others. */}}
{{- define "walrus.joinList" -}}
{{- $addrs := list }}
{{- range $i := until (int .Values.replicaCount) }}
{{- $addrs = append $addrs (printf "%s:%d" (include "walrus.podHost" (list $ $i)) (int $.Values.ports.raft)) }}
{{- end }}
{{- join "," $addrs }}
{{- end }}

{{/* Checks of the values that would otherwise render a broken cluster. */}}
{{- define "walrus.validate" -}}
{{- if lt (int .Values.replicaCount) 1 }}
{{- fail "replicaCount must be at least 1" }}
{{- end }}
{{- /* lookup finds nothing under helm template or --dry-run=client. */}}
{{- $current := lookup "apps/v1" "StatefulSet" .Release.Namespace (include "walrus.fullname" .) }}
{{- if and $current (not .Values.allowScaleDown) }}
{{- if lt (int .Values.replicaCount) (int $current.spec.replicas) }}
{{- fail (printf "replicaCount %d is below the StatefulSet's %d replicas: scaling down is not supported yet (the removed nodes would stay Raft voters and count against the majority; see README.md). Set allowScaleDown=true only once they have been removed from the cluster." (int .Values.replicaCount) (int $current.spec.replicas)) }}
{{- end }}
{{- end }}
{{- $managed := list "node-id" "node-id-from-hostname" "bootstrap-node-id" "bootstrap-expect" "join" "data-dir" "raft-host" "raft-port" "raft-advertise-host" "client-host" "client-port" "port" "nats-port" "nats-cluster-port" "http-port" "config" }}
{{- range $key, $_ := .Values.config }}
{{- if has $key $managed }}
{{- fail (printf "config.%s is set by the chart (see values.yaml: ports, cluster, replicaCount); remove it from config" $key) }}
{{- end }}
{{- end }}
{{- $numbers := list }}
{{- range $name, $port := .Values.ports }}
{{- if or (lt (int $port) 1) (gt (int $port) 65535) }}
{{- fail (printf "ports.%s must be a port number (1-65535), not %v" $name $port) }}
{{- end }}
{{- $numbers = append $numbers (int $port) }}
{{- end }}
{{- if ne (len (uniq $numbers)) (len $numbers) }}
{{- fail "ports: every port must be different" }}
{{- end }}
{{- end }}

{{/* A probe from the values, on the HTTP port unless it names one. */}}
{{- define "walrus.probe" -}}
{{- $probe := deepCopy . }}
{{- if $probe.httpGet }}
{{- $_ := set $probe.httpGet "port" ($probe.httpGet.port | default "http") }}
{{- end }}
{{- toYaml $probe }}
{{- end }}
