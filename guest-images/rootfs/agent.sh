# Hiber console agent: a line protocol on the serial console (ttyS0).
# Sourced by /init; see README.md for the protocol.
#
# Request (host -> guest), one line:   run <id> <shell command>
# Reply (guest -> host), each on a line of its own:
#   hiber-agent: begin <id>
#   ...whatever the command prints (stdout and stderr)...
#   hiber-agent: done <id> <exit status>
#
# The command runs in a subshell of this shell (a fork, no exec), with its
# input from /dev/null so it cannot eat the next requests.
#
# Request `exit-init` makes PID 1 exit, so the kernel panics: the tests use
# it to check how a VMM reports a guest panic.

agent_run() {
	agent_id=${1%% *}
	agent_cmd=${1#"$agent_id"}
	agent_cmd=${agent_cmd# }
	echo "hiber-agent: begin $agent_id"
	( eval "$agent_cmd" ) </dev/null
	echo "hiber-agent: done $agent_id $?"
}

agent_main() {
	echo "hiber-agent: listening"
	while IFS= read -r agent_line; do
		case "$agent_line" in
		"run "?*) agent_run "${agent_line#run }" ;;
		"exit-init")
			echo "hiber-agent: PID 1 exits on request"
			exit 1
			;;
		"") ;;
		*) echo "hiber-agent: error unknown request (want: run <id> <command>)" ;;
		esac
	done
}
