package tributary.bench;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The command line shared by the three baselines:
 * {@code --bootstrap HOST:PORT --group ID --output TOPIC [--commit-ms 100] [--state-dir DIR] --source NAME=TOPIC ...}.
 * Each flag falls back to an environment variable ({@code KSB_BOOTSTRAP}, {@code KSB_GROUP}, {@code KSB_OUTPUT},
 * {@code KSB_COMMIT_MS}, {@code KSB_STATE_DIR}, {@code KSB_SOURCES} as {@code name=topic,name=topic}).
 * Sources keep their order: it is their priority order, lowest first, as in the bench's Tributary config.
 */
final class Args {
    final String bootstrap;
    final String group;
    final String output;
    final long commitMs;
    final String stateDir;
    /** Source name to topic, in priority order (the first has priority 0). */
    final LinkedHashMap<String, String> sources = new LinkedHashMap<>();

    Args(String[] argv) {
        Map<String, String> flags = new LinkedHashMap<>();
        List<String> sourceSpecs = new ArrayList<>();
        for (int i = 0; i < argv.length; i++) {
            String flag = argv[i];
            if (!flag.startsWith("--") || i + 1 >= argv.length) {
                throw new IllegalArgumentException("expected --flag value, got " + flag);
            }
            String value = argv[++i];
            if (flag.equals("--source")) {
                sourceSpecs.add(value);
            } else {
                flags.put(flag.substring(2), value);
            }
        }
        if (sourceSpecs.isEmpty() && System.getenv("KSB_SOURCES") != null) {
            sourceSpecs.addAll(List.of(System.getenv("KSB_SOURCES").split(",")));
        }
        bootstrap = get(flags, "bootstrap", null);
        group = get(flags, "group", null);
        output = get(flags, "output", null);
        commitMs = Long.parseLong(get(flags, "commit-ms", "100"));
        stateDir = get(flags, "state-dir", System.getProperty("java.io.tmpdir") + "/kstreams-bench");
        for (String spec : sourceSpecs) {
            int eq = spec.indexOf('=');
            if (eq <= 0 || eq == spec.length() - 1) {
                throw new IllegalArgumentException("--source " + spec + ": expected NAME=TOPIC");
            }
            sources.put(spec.substring(0, eq), spec.substring(eq + 1));
        }
        if (sources.isEmpty()) {
            throw new IllegalArgumentException("no --source NAME=TOPIC given (or KSB_SOURCES)");
        }
    }

    private static String get(Map<String, String> flags, String name, String fallback) {
        String v = flags.get(name);
        if (v == null) {
            v = System.getenv("KSB_" + name.toUpperCase().replace('-', '_'));
        }
        if (v == null) {
            v = fallback;
        }
        if (v == null) {
            throw new IllegalArgumentException("missing --" + name);
        }
        return v;
    }

    List<String> topics() {
        return new ArrayList<>(sources.values());
    }
}
