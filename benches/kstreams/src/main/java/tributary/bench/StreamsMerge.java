package tributary.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.Iterator;
import java.util.Map;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.api.FixedKeyProcessor;
import org.apache.kafka.streams.processor.api.FixedKeyProcessorContext;
import org.apache.kafka.streams.processor.api.FixedKeyRecord;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * The merge Tributary does in the e2e bench, hand-coded in Kafka Streams the way a user would write it instead:
 * Debezium JSON from every source topic, derived clocks, row-level last-writer-wins, one merged row per key to a
 * compacted output topic.
 *
 * <ul>
 *   <li>Each source topic is read as its own stream and normalized into an {@link Event} (source name, commit time
 *       {@code source.ts_ms}, falling back to {@code ts_ms}, then to the record time; upsert or delete; the
 *       {@code after} row). Debezium tombstones (null values) are skipped; truncates and records that are not
 *       Debezium JSON are dropped (Tributary sends them to its dead-letter topic).
 *   <li>The streams are merged and aggregated per key into a KTable (state store {@code merged}, with its changelog
 *       topic) holding the latest version per source. The version's clock is a per-source counter per key: updates
 *       from one source are totally ordered (they arrive in offset order within a partition), updates from different
 *       sources are concurrent, exactly Tributary's derived clocks. So the set of maximal versions is the latest
 *       version of each source.
 *   <li>The merged row is the set's lww winner: the largest commit time, then the larger source priority (the order
 *       of {@code --source}, first = 0), then the source name that sorts first. (Tributary's further ties, own clock
 *       entry and content, cannot arise with one version per source.) A winning delete is a tombstone.
 * </ul>
 *
 * <p>The KTable's record cache (Streams' default) forwards the latest merged row per key once per commit rather than
 * one per event; the compacted output holds the same last row per key either way.
 */
public final class StreamsMerge {
    static final ObjectMapper JSON = new ObjectMapper();

    /** One normalized change event. {@code row} is null for a delete. */
    static final class Event {
        String source;
        long ts;
        JsonNode row;

        Event(String source, long ts, JsonNode row) {
            this.source = source;
            this.ts = ts;
            this.row = row;
        }
    }

    /** One source's latest version of a key. */
    static final class Version {
        long seq;
        long ts;
        JsonNode row;

        Version(long seq, long ts, JsonNode row) {
            this.seq = seq;
            this.ts = ts;
            this.row = row;
        }
    }

    /** The KTable's value: the latest version of each source. */
    static final class Versions {
        final Map<String, Version> bySource = new java.util.TreeMap<>();

        Versions apply(Event e) {
            Version prev = bySource.get(e.source);
            bySource.put(e.source, new Version(prev == null ? 1 : prev.seq + 1, e.ts, e.row));
            return this;
        }

        /** The winner's row as JSON, or null (a tombstone) when the winner is a delete. */
        String resolve(Map<String, Integer> priority) {
            String best = null;
            Version win = null;
            for (Map.Entry<String, Version> en : bySource.entrySet()) {
                Version v = en.getValue();
                if (win == null || v.ts > win.ts
                        || (v.ts == win.ts && priority.getOrDefault(en.getKey(), 0) > priority.getOrDefault(best, 0))) {
                    // Entries iterate in name order, so on a full tie the name that sorts first stays.
                    best = en.getKey();
                    win = v;
                }
            }
            return win == null || win.row == null ? null : win.row.toString();
        }
    }

    /** Debezium JSON to {@link Event}; forwards nothing for tombstones, truncates and unreadable records. */
    static final class Normalize implements FixedKeyProcessor<String, byte[], Event> {
        private final String source;
        private FixedKeyProcessorContext<String, Event> context;

        Normalize(String source) {
            this.source = source;
        }

        @Override
        public void init(FixedKeyProcessorContext<String, Event> context) {
            this.context = context;
        }

        @Override
        public void process(FixedKeyRecord<String, byte[]> record) {
            if (record.value() == null || record.key() == null) {
                return;
            }
            JsonNode env;
            try {
                env = JSON.readTree(record.value());
            } catch (IOException e) {
                return;
            }
            String op = env.path("op").asText("");
            JsonNode row;
            switch (op) {
                case "c", "u", "r" -> row = env.get("after");
                case "d" -> row = null;
                default -> {
                    return;
                }
            }
            if (row != null && !row.isObject()) {
                return;
            }
            JsonNode ts = env.path("source").path("ts_ms");
            if (!ts.isNumber()) {
                ts = env.path("ts_ms");
            }
            long t = ts.isNumber() ? ts.asLong() : record.timestamp();
            context.forward(record.withValue(new Event(source, t, row)));
        }
    }

    public static void main(String[] argv) throws Exception {
        Args args = new Args(argv);
        Map<String, Integer> priority = new java.util.HashMap<>();
        StreamsBuilder builder = new StreamsBuilder();
        KStream<String, Event> events = null;
        for (Map.Entry<String, String> s : args.sources.entrySet()) {
            String name = s.getKey();
            priority.put(name, priority.size());
            KStream<String, Event> one = builder.stream(s.getValue(), Consumed.with(Serdes.String(), Serdes.ByteArray()))
                    .processValues(() -> new Normalize(name));
            events = events == null ? one : events.merge(one);
        }
        events.groupByKey(Grouped.with(Serdes.String(), EVENT_SERDE))
                .aggregate(Versions::new, (key, event, versions) -> versions.apply(event),
                        Materialized.<String, Versions, KeyValueStore<Bytes, byte[]>>as("merged")
                                .withKeySerde(Serdes.String())
                                .withValueSerde(VERSIONS_SERDE))
                .toStream()
                .mapValues(v -> v.resolve(priority))
                .to(args.output, Produced.with(Serdes.String(), Serdes.String()));
        Streams.run(builder.build(), Streams.config(args));
    }

    // ------------------------------------------------------------------ serdes (JSON, as a Streams user would)

    static final Serde<Event> EVENT_SERDE = Serdes.serdeFrom(
            (Serializer<Event>) (topic, e) -> {
                ObjectNode o = JSON.createObjectNode();
                o.put("source", e.source);
                o.put("ts", e.ts);
                o.set("row", e.row);
                return bytes(o);
            },
            (Deserializer<Event>) (topic, data) -> {
                JsonNode o = tree(data);
                JsonNode row = o.get("row");
                return new Event(o.get("source").asText(), o.get("ts").asLong(), row == null || row.isNull() ? null : row);
            });

    static final Serde<Versions> VERSIONS_SERDE = Serdes.serdeFrom(
            (Serializer<Versions>) (topic, vs) -> {
                ObjectNode o = JSON.createObjectNode();
                for (Map.Entry<String, Version> en : vs.bySource.entrySet()) {
                    ObjectNode v = o.putObject(en.getKey());
                    v.put("seq", en.getValue().seq);
                    v.put("ts", en.getValue().ts);
                    v.set("row", en.getValue().row);
                }
                return bytes(o);
            },
            (Deserializer<Versions>) (topic, data) -> {
                Versions vs = new Versions();
                if (data == null) {
                    return null;
                }
                Iterator<Map.Entry<String, JsonNode>> it = tree(data).fields();
                while (it.hasNext()) {
                    Map.Entry<String, JsonNode> en = it.next();
                    JsonNode v = en.getValue();
                    JsonNode row = v.get("row");
                    vs.bySource.put(en.getKey(),
                            new Version(v.get("seq").asLong(), v.get("ts").asLong(), row == null || row.isNull() ? null : row));
                }
                return vs;
            });

    private static byte[] bytes(JsonNode n) {
        try {
            return JSON.writeValueAsBytes(n);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private static JsonNode tree(byte[] data) {
        try {
            return JSON.readTree(data);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}
