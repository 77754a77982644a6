"""The configuration file: every key validated, named in every error (docs/configuration.md).

``file`` holds the core sections (``[node]``, ``[community]``, ``[p2p]``,
``[store]``, ``[meter]``, ``[tariffs]``), :func:`load_config` and
:func:`parse_config`; ``table`` the safe readers (:class:`Table`) and
:class:`Section`, with which each daemon component owns its own section
(p2pd/components/). Import from here.
"""

from __future__ import annotations

from p2pd.config.file import CORE_SECTIONS as CORE_SECTIONS
from p2pd.config.file import DAY as DAY
from p2pd.config.file import DEFAULT_PORT as DEFAULT_PORT
from p2pd.config.file import LOG_LEVELS as LOG_LEVELS
from p2pd.config.file import MAX_CONFIG_BYTES as MAX_CONFIG_BYTES
from p2pd.config.file import CommunityConfig as CommunityConfig
from p2pd.config.file import Config as Config
from p2pd.config.file import MeterConfig as MeterConfig
from p2pd.config.file import NodeConfig as NodeConfig
from p2pd.config.file import P2PConfig as P2PConfig
from p2pd.config.file import PeerAddress as PeerAddress
from p2pd.config.file import StoreConfig as StoreConfig
from p2pd.config.file import TariffsConfig as TariffsConfig
from p2pd.config.file import config_from_bytes as config_from_bytes
from p2pd.config.file import describe as describe
from p2pd.config.file import load_config as load_config
from p2pd.config.file import parse_config as parse_config
from p2pd.config.file import parse_peer as parse_peer
from p2pd.config.table import MAX_DEPTH as MAX_DEPTH
from p2pd.config.table import SHOW_CHARS as SHOW_CHARS
from p2pd.config.table import HasSections as HasSections
from p2pd.config.table import Section as Section
from p2pd.config.table import Table as Table
from p2pd.config.table import check_shape as check_shape
from p2pd.errors import ConfigError as ConfigError
