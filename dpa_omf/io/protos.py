"""The WOMD ``Scenario`` and TensorFlow ``Example`` protobuf messages, defined without protoc, waymo or TF.

The schema is the public one of the Waymo Open Dataset
(``waymo_open_dataset/protos/scenario.proto`` and ``map.proto``, package
``waymo.open_dataset``), transcribed field by field (names, numbers, types,
labels) into a ``FileDescriptorProto`` built with ``descriptor_pb2`` and turned
into message classes with ``message_factory``. Fields this project never reads
(lidar, camera tokens) are left out: protobuf keeps them as unknown fields, so
parsing real files is unaffected.

``Example`` (``tensorflow/core/example/{example,feature}.proto``, package
``tensorflow``) is transcribed the same way, so that tf.Example records are
parsed by the protobuf library without importing TensorFlow.

Usage::

    from dpa_omf.io import protos
    msg = protos.Scenario.FromString(data)
    msg.tracks[0].states[10].center_x
    protos.Example.FromString(record).features.feature["state/id"].float_list.value
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "waymo.open_dataset"
_F = descriptor_pb2.FieldDescriptorProto

_SCALARS = {
    "double": _F.TYPE_DOUBLE, "float": _F.TYPE_FLOAT, "int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64,
    "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING,
}

# Enums: name -> [(value name, number)].
_ENUMS = {
    "Track.ObjectType": [("TYPE_UNSET", 0), ("TYPE_VEHICLE", 1), ("TYPE_PEDESTRIAN", 2), ("TYPE_CYCLIST", 3),
                         ("TYPE_OTHER", 4)],
    "RequiredPrediction.DifficultyLevel": [("NONE", 0), ("LEVEL_1", 1), ("LEVEL_2", 2)],
    "TrafficSignalLaneState.State": [
        ("LANE_STATE_UNKNOWN", 0), ("LANE_STATE_ARROW_STOP", 1), ("LANE_STATE_ARROW_CAUTION", 2),
        ("LANE_STATE_ARROW_GO", 3), ("LANE_STATE_STOP", 4), ("LANE_STATE_CAUTION", 5), ("LANE_STATE_GO", 6),
        ("LANE_STATE_FLASHING_STOP", 7), ("LANE_STATE_FLASHING_CAUTION", 8)],
    "LaneCenter.LaneType": [("TYPE_UNDEFINED", 0), ("TYPE_FREEWAY", 1), ("TYPE_SURFACE_STREET", 2),
                            ("TYPE_BIKE_LANE", 3)],
    "RoadEdge.RoadEdgeType": [("TYPE_UNKNOWN", 0), ("TYPE_ROAD_EDGE_BOUNDARY", 1), ("TYPE_ROAD_EDGE_MEDIAN", 2)],
    "RoadLine.RoadLineType": [
        ("TYPE_UNKNOWN", 0), ("TYPE_BROKEN_SINGLE_WHITE", 1), ("TYPE_SOLID_SINGLE_WHITE", 2),
        ("TYPE_SOLID_DOUBLE_WHITE", 3), ("TYPE_BROKEN_SINGLE_YELLOW", 4), ("TYPE_BROKEN_DOUBLE_YELLOW", 5),
        ("TYPE_SOLID_SINGLE_YELLOW", 6), ("TYPE_SOLID_DOUBLE_YELLOW", 7), ("TYPE_PASSING_DOUBLE_YELLOW", 8)],
}

# Messages: name -> [(field name, number, label 'opt' | 'rep' | 'packed', type, oneof or None)].
# A type that is not a scalar names a message or an enum of this file.
_MESSAGES = {
    # ---- map.proto
    "MapPoint": [("x", 1, "opt", "double"), ("y", 2, "opt", "double"), ("z", 3, "opt", "double")],
    "TrafficSignalLaneState": [("lane", 1, "opt", "int64"), ("state", 2, "opt", "TrafficSignalLaneState.State"),
                               ("stop_point", 3, "opt", "MapPoint")],
    "DynamicState": [("timestamp_seconds", 1, "opt", "double"),
                     ("lane_states", 2, "rep", "TrafficSignalLaneState")],
    "BoundarySegment": [("lane_start_index", 1, "opt", "int32"), ("lane_end_index", 2, "opt", "int32"),
                        ("boundary_feature_id", 3, "opt", "int64"),
                        ("boundary_type", 4, "opt", "RoadLine.RoadLineType")],
    "LaneNeighbor": [("feature_id", 1, "opt", "int64"), ("self_start_index", 2, "opt", "int32"),
                     ("self_end_index", 3, "opt", "int32"), ("neighbor_start_index", 4, "opt", "int32"),
                     ("neighbor_end_index", 5, "opt", "int32"), ("boundaries", 6, "rep", "BoundarySegment")],
    "LaneCenter": [("speed_limit_mph", 1, "opt", "double"), ("type", 2, "opt", "LaneCenter.LaneType"),
                   ("interpolating", 3, "opt", "bool"), ("polyline", 8, "rep", "MapPoint"),
                   ("entry_lanes", 9, "packed", "int64"), ("exit_lanes", 10, "packed", "int64"),
                   ("left_boundaries", 13, "rep", "BoundarySegment"),
                   ("right_boundaries", 14, "rep", "BoundarySegment"),
                   ("left_neighbors", 11, "rep", "LaneNeighbor"), ("right_neighbors", 12, "rep", "LaneNeighbor")],
    "RoadEdge": [("type", 1, "opt", "RoadEdge.RoadEdgeType"), ("polyline", 2, "rep", "MapPoint")],
    "RoadLine": [("type", 1, "opt", "RoadLine.RoadLineType"), ("polyline", 2, "rep", "MapPoint")],
    "StopSign": [("lane", 1, "rep", "int64"), ("position", 2, "opt", "MapPoint")],
    "Crosswalk": [("polygon", 1, "rep", "MapPoint")],
    "SpeedBump": [("polygon", 1, "rep", "MapPoint")],
    "Driveway": [("polygon", 1, "rep", "MapPoint")],
    "MapFeature": [("id", 1, "opt", "int64"),
                   ("lane", 3, "opt", "LaneCenter", "feature_data"),
                   ("road_line", 4, "opt", "RoadLine", "feature_data"),
                   ("road_edge", 5, "opt", "RoadEdge", "feature_data"),
                   ("stop_sign", 7, "opt", "StopSign", "feature_data"),
                   ("crosswalk", 8, "opt", "Crosswalk", "feature_data"),
                   ("speed_bump", 9, "opt", "SpeedBump", "feature_data"),
                   ("driveway", 10, "opt", "Driveway", "feature_data")],
    "Map": [("map_features", 1, "rep", "MapFeature"), ("dynamic_states", 2, "rep", "DynamicState")],
    # ---- scenario.proto
    "ObjectState": [("center_x", 2, "opt", "double"), ("center_y", 3, "opt", "double"),
                    ("center_z", 4, "opt", "double"), ("length", 5, "opt", "float"), ("width", 6, "opt", "float"),
                    ("height", 7, "opt", "float"), ("heading", 8, "opt", "float"),
                    ("velocity_x", 9, "opt", "float"), ("velocity_y", 10, "opt", "float"),
                    ("valid", 11, "opt", "bool")],
    "Track": [("id", 1, "opt", "int32"), ("object_type", 2, "opt", "Track.ObjectType"),
              ("states", 3, "rep", "ObjectState")],
    "DynamicMapState": [("lane_states", 1, "rep", "TrafficSignalLaneState")],
    "RequiredPrediction": [("track_index", 1, "opt", "int32"),
                           ("difficulty", 2, "opt", "RequiredPrediction.DifficultyLevel")],
    "Scenario": [("scenario_id", 5, "opt", "string"), ("timestamps_seconds", 1, "rep", "double"),
                 ("current_time_index", 10, "opt", "int32"), ("tracks", 2, "rep", "Track"),
                 ("dynamic_map_states", 7, "rep", "DynamicMapState"), ("map_features", 8, "rep", "MapFeature"),
                 ("sdc_track_index", 6, "opt", "int32"), ("objects_of_interest", 4, "rep", "int32"),
                 ("tracks_to_predict", 11, "rep", "RequiredPrediction")],
}


def build_file_descriptor(filename: str, messages: dict, enums: dict) -> descriptor_pb2.FileDescriptorProto:
    """A proto2 FileDescriptorProto of package ``PACKAGE`` from field tables.

    Args:
      filename: the descriptor's file name (unique per pool).
      messages: name -> [(field, number, label, type[, oneof])]; label: opt | rep | packed; type: a scalar
        name of ``_SCALARS``, an enum ``"Owner.Enum"`` of ``enums`` or a message name.
      enums: "Owner.Enum" -> [(value name, number)] (nested in message Owner).
    """
    fd = descriptor_pb2.FileDescriptorProto(name=filename, package=PACKAGE, syntax="proto2")
    protos: dict[str, descriptor_pb2.DescriptorProto] = {}
    for name in messages:
        protos[name] = fd.message_type.add(name=name)
    for full, values in enums.items():
        owner, enum_name = full.split(".")
        enum = protos[owner].enum_type.add(name=enum_name)
        for value_name, number in values:
            enum.value.add(name=value_name, number=number)
    for name, fields in messages.items():
        msg = protos[name]
        oneofs: dict[str, int] = {}
        for field_name, number, label, ftype, *oneof in fields:
            f = msg.field.add(name=field_name, number=number)
            f.label = _F.LABEL_OPTIONAL if label == "opt" else _F.LABEL_REPEATED
            if label == "packed":
                f.options.packed = True
            if ftype in _SCALARS:
                f.type = _SCALARS[ftype]
            else:
                f.type = _F.TYPE_ENUM if ftype in enums else _F.TYPE_MESSAGE
                f.type_name = f".{PACKAGE}.{ftype}"
            if oneof:
                if oneof[0] not in oneofs:
                    oneofs[oneof[0]] = len(msg.oneof_decl)
                    msg.oneof_decl.add(name=oneof[0])
                f.oneof_index = oneofs[oneof[0]]
    return fd


def message_class_factory(filename: str, messages: dict, enums: dict):
    """``name -> message class`` for the messages of a private descriptor pool (no clash between
    in-project definitions of the same package)."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(build_file_descriptor(filename, messages, enums))
    return lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))


message_class = message_class_factory("dpa_omf/womd_scenario.proto", _MESSAGES, _ENUMS)


Scenario = message_class("Scenario")
Track = message_class("Track")
ObjectState = message_class("ObjectState")
DynamicMapState = message_class("DynamicMapState")
TrafficSignalLaneState = message_class("TrafficSignalLaneState")
RequiredPrediction = message_class("RequiredPrediction")
MapFeature = message_class("MapFeature")
MapPoint = message_class("MapPoint")
LaneCenter = message_class("LaneCenter")
RoadLine = message_class("RoadLine")
RoadEdge = message_class("RoadEdge")
StopSign = message_class("StopSign")
Crosswalk = message_class("Crosswalk")
SpeedBump = message_class("SpeedBump")
Driveway = message_class("Driveway")
Map = message_class("Map")


# ---- tensorflow/core/example/{example,feature}.proto
def example_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """``Example``, ``Features`` (a ``map<string, Feature>``), ``Feature`` and the three value lists."""
    fd = descriptor_pb2.FileDescriptorProto(name="dpa_omf/tf_example.proto", package="tensorflow",
                                            syntax="proto3")

    def add(msg, name, number, ftype, label=_F.LABEL_OPTIONAL, type_name=None, oneof=None):
        f = msg.field.add(name=name, number=number, type=ftype, label=label)
        if type_name:
            f.type_name = f".tensorflow.{type_name}"
        if oneof is not None:
            f.oneof_index = oneof
        return f

    for name, ftype in (("BytesList", _F.TYPE_BYTES), ("FloatList", _F.TYPE_FLOAT), ("Int64List", _F.TYPE_INT64)):
        f = add(fd.message_type.add(name=name), "value", 1, ftype, _F.LABEL_REPEATED)
        if ftype != _F.TYPE_BYTES:
            f.options.packed = True
    feature = fd.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, name in enumerate(("bytes_list", "float_list", "int64_list"), start=1):
        add(feature, name, number, _F.TYPE_MESSAGE, type_name=name.title().replace("_", ""), oneof=0)
    features = fd.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    add(entry, "key", 1, _F.TYPE_STRING)
    add(entry, "value", 2, _F.TYPE_MESSAGE, type_name="Feature")
    add(features, "feature", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, type_name="Features.FeatureEntry")
    add(fd.message_type.add(name="Example"), "features", 1, _F.TYPE_MESSAGE, type_name="Features")
    return fd


def _example_classes():
    pool = descriptor_pool.DescriptorPool()
    pool.Add(example_file_descriptor())
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}"))
            for name in ("Example", "Features", "Feature", "BytesList", "FloatList", "Int64List")}


_EXAMPLE_CLASSES = _example_classes()
Example = _EXAMPLE_CLASSES["Example"]
Feature = _EXAMPLE_CLASSES["Feature"]
