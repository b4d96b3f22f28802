# bash completion for adba; generated from its parser by
# `python -m adba.cli.completion --write adba/data/completion`: do not edit.
_adba() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"
    local noun="" verb="" i w opts="" valued="" subs=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${COMP_WORDS[i]}"
        [[ $w == -* ]] && continue
        if [[ -z $noun ]]; then noun=$w; elif [[ -z $verb ]]; then verb=$w; break; fi
    done
    case "$noun" in
        "") COMPREPLY=($(compgen -W "directory ao acl authority agent kms mak avma inventory console demo completion --help --verbose --version -h -v" -- "$cur")); return ;;
    esac
    case "$noun/$verb" in
        "directory/") subs="init check replicate" ;;
        "directory/init")
            opts="--admin-group --base --bind-dn --ca-file --computers --config-uri --help --insecure --json --no-audit --password-file --timeout --tls-name --uri --verbose -D -H -b -v"; valued="--config-uri --admin-group --computers -H --uri -b --base -D --bind-dn --password-file --ca-file --tls-name --timeout"
            ;;
        "directory/check")
            opts="--admin-group --base --bind-dn --ca-file --computers --config-uri --help --insecure --json --password-file --timeout --tls-name --uri --verbose -D -H -b -v"; valued="--config-uri --admin-group --computers -H --uri -b --base -D --bind-dn --password-file --ca-file --tls-name --timeout"
            ;;
        "directory/replicate")
            opts="--base --bind-dn --ca-file --config-uri --help --insecure --json --password-file --peer --peer-ca-file --replicator-dn --replicator-password-file --retry --role --server-id --timeout --tls-name --update-ref --uri --verbose -D -H -b -v"; valued="--role --server-id --peer --replicator-dn --replicator-password-file --peer-ca-file --retry --update-ref --config-uri -H --uri -b --base -D --bind-dn --password-file --ca-file --tls-name --timeout"
            case "$prev" in
                --role) COMPREPLY=($(compgen -W "provider consumer" -- "$cur")); return ;;
            esac
            ;;
        "ao/") subs="publish list show delete history" ;;
        "ao/publish")
            opts="--apply-cid --authority --authority-ca-file --base --bind-dn --ca-file --catalog --get-iid --help --insecure --json --key --key-file --name --online --password-file --root-key --timeout --tls-name --uri --verbose -D -H -b -v"; valued="--key-file --key --name --online --authority --apply-cid --authority-ca-file --root-key --catalog -H --uri -b --base -D --bind-dn --password-file --ca-file --tls-name --timeout"
            ;;
        "ao/list")
            opts="--base --bind-dn --ca-file --catalog --edition --help --insecure --json --password-file --root-key --timeout --tls-name --uri --verbose -D -H -b -v"; valued="--edition --root-key --catalog -H --uri -b --base -D --bind-dn --password-file --ca-file --tls-name --timeout"
            ;;
        "ao/show")
            opts="--base --bind-dn --ca-file --catalog --help --insecure --json --password-file --root-key --timeout --tls-name --uri --verbose -D -H -b -v"; valued="--root-key --catalog -H --uri -b --base -D --bind-dn --password-file --ca-file --tls-name --timeout"
            ;;
        "ao/delete")
            opts="--base --bind-dn --ca-file --help --insecure --password-file --timeout --tls-name --uri --verbose --yes -D -H -b -v -y"; valued="-H --uri -b --base -D --bind-dn --password-file --ca-file --tls-name --timeout"
            ;;
        "ao/history")
            opts="--base --bind-dn --ca-file --help --insecure --json --password-file --since --timeout --tls-name --uri --verbose -D -H -b -v"; valued="--since -H --uri -b --base -D --bind-dn --password-file --ca-file --tls-name --timeout"
            ;;
        "acl/") subs="show grant revoke" ;;
        "acl/show")
            opts="--base --bind-dn --ca-file --config-uri --help --insecure --json --password-file --timeout --tls-name --uri --verbose -D -H -b -v"; valued="--config-uri -H --uri -b --base -D --bind-dn --password-file --ca-file --tls-name --timeout"
            ;;
        "acl/grant")
            opts="--base --bind-dn --ca-file --help --insecure --password-file --read --timeout --tls-name --uri --verbose -D -H -b -v"; valued="-H --uri -b --base -D --bind-dn --password-file --ca-file --tls-name --timeout"
            ;;
        "acl/revoke")
            opts="--base --bind-dn --ca-file --help --insecure --password-file --timeout --tls-name --uri --verbose -D -H -b -v"; valued="-H --uri -b --base -D --bind-dn --password-file --ca-file --tls-name --timeout"
            ;;
        "authority/") subs="init mint serve confirm grant-hosts rotate retire report" ;;
        "authority/init")
            opts="--cert-days --database --help --json --path --verbose -v"; valued="--path --database --cert-days"
            ;;
        "authority/mint")
            opts="--catalog --count --database --help --json --path --product --type --verbose -v"; valued="--path --database --type --product --catalog --count"
            case "$prev" in
                --type) COMPREPLY=($(compgen -W "csvlk mak" -- "$cur")); return ;;
            esac
            ;;
        "authority/serve")
            opts="--catalog --database --help --listen --max-connections --max-per-address --path --port --request-timeout --tls-cert --tls-key --verbose -v"; valued="--path --database --listen --port --tls-cert --tls-key --catalog --request-timeout --max-connections --max-per-address"
            ;;
        "authority/confirm")
            opts="--catalog --database --help --json --path --verbose -v"; valued="--path --database --catalog"
            ;;
        "authority/grant-hosts")
            opts="--database --help --hosts --key --key-file --path --verbose -v"; valued="--path --database --key-file --key --hosts"
            ;;
        "authority/rotate")
            opts="--cert-days --database --help --path --retire --verbose -v"; valued="--path --database --cert-days"
            ;;
        "authority/retire")
            opts="--database --help --path --verbose -v"; valued="--path --database"
            ;;
        "authority/report")
            opts="--catalog --database --help --json --path --verbose -v"; valued="--path --database --catalog"
            ;;
        "agent/") subs="run status get-iid apply-cid install-units" ;;
        "agent/run")
            opts="--config --help --if-due --json --once --strict --verbose -v"; valued="--config"
            ;;
        "agent/status")
            opts="--config --help --json --state --verbose -v"; valued="--state --config"
            ;;
        "agent/get-iid")
            opts="--config --help --json --verbose -v"; valued="--config"
            ;;
        "agent/apply-cid")
            opts="--config --edition --file --help --verbose -v"; valued="--edition --file --config"
            ;;
        "agent/install-units")
            opts="--adba --dir --help --verbose -v"; valued="--dir --adba"
            ;;
        "kms/") subs="install-key serve probe status clients publish unpublish" ;;
        "kms/install-key")
            opts="--apply-cid --authority --authority-ca-file --catalog --get-iid --help --host-id --json --key --key-file --online --reactivate --root-key --state-dir --verbose -v"; valued="--state-dir --key-file --key --online --authority --apply-cid --authority-ca-file --root-key --host-id --catalog"
            ;;
        "kms/serve")
            opts="--address --clients-api --clients-tls-cert --clients-tls-key --clients-token-file --deadline --dns-server --first-byte-deadline --help --host-name --listen --log-interval --max-connections --max-per-source --metrics-port --port --priority --publish --quiet --state-dir --tsig-key-file --verbose --weight --workers -q -v"; valued="--state-dir --listen --port --workers --metrics-port --deadline --first-byte-deadline --max-connections --max-per-source --log-interval --publish --priority --weight --dns-server --tsig-key-file --host-name --address --clients-api --clients-token-file --clients-tls-cert --clients-tls-key"
            ;;
        "kms/probe")
            opts="--help --timeout --verbose -v"; valued="--timeout"
            ;;
        "kms/status")
            opts="--help --json --state-dir --verbose -v"; valued="--state-dir"
            ;;
        "kms/clients")
            opts="--help --json --state-dir --verbose -v"; valued="--state-dir"
            ;;
        "kms/publish")
            opts="--address --dns-server --help --host-name --port --priority --publish --state-dir --tsig-key-file --verbose --weight -v"; valued="--state-dir --port --publish --priority --weight --dns-server --tsig-key-file --host-name --address"
            ;;
        "kms/unpublish")
            opts="--address --dns-server --help --host-name --port --priority --publish --state-dir --tsig-key-file --verbose --weight -v"; valued="--state-dir --port --publish --priority --weight --dns-server --tsig-key-file --host-name --address"
            ;;
        "mak/") subs="proxy" ;;
        "mak/proxy")
            opts="--authority-ca-file --help --json --online --out --verbose -v"; valued="--online --authority-ca-file --out"
            ;;
        "avma/") subs="init serve guests" ;;
        "avma/init")
            opts="--authority --authority-ca-file --catalog --edition --help --host-id --json --key-file --online --state-dir --verbose -v"; valued="--state-dir --online --authority --key-file --authority-ca-file --edition --host-id --catalog"
            ;;
        "avma/serve")
            opts="--agent-state --catalog --help --listen --metrics-address --metrics-port --quiet --renewal-hours --state-dir --validity-hours --verbose -q -v"; valued="--state-dir --listen --agent-state --catalog --validity-hours --renewal-hours --metrics-port --metrics-address"
            ;;
        "avma/guests")
            opts="--help --json --state-dir --verbose -v"; valued="--state-dir"
            ;;
        "inventory/") subs="discover add collect import list summary history export" ;;
        "inventory/discover")
            opts="--base --bind-dn --ca-file --computers --db --help --insecure --json --password-file --timeout --tls-name --uri --verbose -D -H -b -v"; valued="--db -H --uri -b --base -D --bind-dn --password-file --ca-file --tls-name --timeout --computers"
            ;;
        "inventory/add")
            opts="--address --db --help --verbose -v"; valued="--db --address"
            ;;
        "inventory/collect")
            opts="--command --concurrency --db --help --identity --json --known-hosts --port --quiet --ssh-config --timeout --user --verbose -q -v"; valued="--db --known-hosts --user --identity --ssh-config --port --command --timeout --concurrency"
            ;;
        "inventory/import")
            opts="--authority --avma-state --ca-file --db --help --json --key-file --kms --kms-token-file --verbose -v"; valued="--db --kms --authority --avma-state --kms-token-file --key-file --ca-file"
            ;;
        "inventory/list")
            opts="--db --help --json --status --verbose --what -v"; valued="--db --status --what"
            case "$prev" in
                --what) COMPREPLY=($(compgen -W "machines kms-clients avma-guests keys scans" -- "$cur")); return ;;
            esac
            ;;
        "inventory/summary")
            opts="--db --help --json --verbose -v"; valued="--db"
            ;;
        "inventory/history")
            opts="--by-status --db --help --json --limit --verbose -v"; valued="--db --limit"
            ;;
        "inventory/export")
            opts="--db --format --help --output --verbose -o -v"; valued="--db --format --output -o"
            case "$prev" in
                --format) COMPREPLY=($(compgen -W "csv json" -- "$cur")); return ;;
            esac
            ;;
        "console/") subs="serve" ;;
        "console/serve")
            opts="--base --bind-dn --ca-file --catalog --db --help --idle-timeout --insecure --listen --password-file --port --root-key --timeout --tls-cert --tls-key --tls-name --uri --user-template --verbose -D -H -b -v"; valued="-H --uri -b --base -D --bind-dn --password-file --ca-file --tls-name --timeout --db --listen --port --tls-cert --tls-key --user-template --idle-timeout --root-key --catalog"
            ;;
        "demo/*")
            opts="--console --help --keep --verbose -v"; valued=""
            ;;
        "completion/") subs="bash zsh" ;;
        "completion/bash")
            opts="--help --verbose -v"; valued=""
            ;;
        "completion/zsh")
            opts="--help --verbose -v"; valued=""
            ;;
    esac
    if [[ -n $subs ]]; then COMPREPLY=($(compgen -W "$subs" -- "$cur")); return; fi
    if [[ " $valued " == *" $prev "* ]]; then COMPREPLY=(); return; fi  # files (-o default)
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}
complete -o default -F _adba adba
