"""paho-mqtt 2.x driven by trio, without a thread of its own.

Shared by ``meter_drivers`` (a meter read from MQTT topics) and ``p2pd``
(Home Assistant discovery and state), so it imports neither: only trio and
paho-mqtt. Public names are re-exported here; import from ``paho_trio`` only.

Why paho-mqtt: it is the maintained MQTT client of the Eclipse project, typed
since 2.0, and it does no I/O of its own when driven through
``loop_read``/``loop_write``/``loop_misc``, which is what lets trio own the
socket. aiomqtt (the usual async wrapper) is asyncio-only.
"""

from __future__ import annotations

from paho_trio.broker import Broker as Broker
from paho_trio.broker import parse_broker_url as parse_broker_url
from paho_trio.broker import read_credentials as read_credentials
from paho_trio.client import Message as Message
from paho_trio.client import MqttClient as MqttClient
from paho_trio.client import MqttError as MqttError
from paho_trio.client import MqttUnavailable as MqttUnavailable
from paho_trio.client import Will as Will
